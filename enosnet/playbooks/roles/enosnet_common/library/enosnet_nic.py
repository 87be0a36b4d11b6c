#!/usr/bin/python
"""Ansible module: MTU and offloads of one interface, changed only where they differ."""

from __future__ import annotations

DOCUMENTATION = r"""
module: enosnet_nic
short_description: Set an interface's MTU (ip link) and offloads (ethtool -K) as a diff
options:
  device:
    description: Interface name.
    type: str
    required: true
  mtu:
    description: Wanted MTU; unset to leave it.
    type: int
  offloads:
    description: ethtool feature (short names like gro, gso, tso, lro, or long names) to true/false.
    type: dict
    default: {}
"""

import json

from ansible.module_utils.basic import AnsibleModule

SHORT = {"gro": "generic-receive-offload", "gso": "generic-segmentation-offload",
         "tso": "tcp-segmentation-offload", "lro": "large-receive-offload",
         "rx": "rx-checksumming", "tx": "tx-checksumming", "sg": "scatter-gather"}


def features(module, device):
    rc, out, err = module.run_command(["ethtool", "-k", device])
    if rc != 0:
        module.fail_json(msg="ethtool -k %s failed: %s" % (device, err.strip()))
    found = {}
    for line in out.splitlines()[1:]:
        name, _, rest = line.strip().partition(":")
        if rest:
            found[name.strip()] = rest.split()[0] == "on"
    return found


def mtu_of(module, device):
    rc, out, err = module.run_command(["ip", "-j", "link", "show", "dev", device])
    if rc != 0:
        module.fail_json(msg="no interface %s: %s" % (device, err.strip()))
    return int(json.loads(out)[0]["mtu"])


def main():
    module = AnsibleModule(
        argument_spec={"device": {"type": "str", "required": True}, "mtu": {"type": "int"},
                       "offloads": {"type": "dict", "default": {}}},
        supports_check_mode=True,
    )
    device, changes = module.params["device"], []
    want_mtu = module.params["mtu"]
    if want_mtu and mtu_of(module, device) != want_mtu:
        changes.append(["ip", "link", "set", "dev", device, "mtu", str(want_mtu)])
    have = features(module, device)
    for name, on in sorted(module.params["offloads"].items()):
        long_name = SHORT.get(name, name)
        if long_name not in have:
            module.fail_json(msg="%s: ethtool knows no feature %s" % (device, name))
        if have[long_name] != module.boolean(on):
            changes.append(["ethtool", "-K", device, name, "on" if module.boolean(on) else "off"])
    if not module.check_mode:
        for argv in changes:
            rc, _, err = module.run_command(argv)
            if rc != 0:
                module.fail_json(msg="`%s` failed: %s" % (" ".join(argv), err.strip()))
    module.exit_json(changed=bool(changes), commands=[" ".join(a) for a in changes])


if __name__ == "__main__":
    main()
