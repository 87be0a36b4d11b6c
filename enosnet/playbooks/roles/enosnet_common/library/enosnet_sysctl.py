#!/usr/bin/python
"""Ansible module: set kernel parameters as a diff, persist them, report those a namespace cannot set."""

from __future__ import annotations

DOCUMENTATION = r"""
module: enosnet_sysctl
short_description: Set sysctl values that differ, persist them in one sysctl.d file
description:
  - Reads every key from /proc/sys, writes only those whose value differs (whitespace-insensitive),
    and writes O(persist) with all values (unchanged file is not rewritten).
  - Keys that cannot be set here (absent, or read-only inside a non-initial network namespace,
    like net.core.rmem_max in a container) are reported in RV(unsettable) and as warnings when
    O(unsettable=warn), or fail the task when O(unsettable=fail).
options:
  values:
    description: Key (dotted, like net.core.rmem_max) to value.
    type: dict
    required: true
  persist:
    description: sysctl.d file holding the values; empty to skip.
    type: path
    default: /etc/sysctl.d/90-enosnet.conf
  unsettable:
    description: What to do with keys that cannot be set on this host.
    type: str
    choices: [warn, fail, ignore]
    default: warn
"""

import os

from ansible.module_utils.basic import AnsibleModule


def proc_path(key):
    return "/proc/sys/" + key.replace(".", "/")


def canonical(value):
    return " ".join(str(value).split())


def read(key):
    with open(proc_path(key)) as handle:
        return canonical(handle.read())


def write(key, value):
    with open(proc_path(key), "w") as handle:
        handle.write(canonical(value))


def persist_text(values):
    lines = ["# Managed by the enosnet_common role: network benchmark tuning."]
    lines += ["%s = %s" % (key, canonical(values[key])) for key in sorted(values)]
    return "\n".join(lines) + "\n"


def main():
    module = AnsibleModule(
        argument_spec={
            "values": {"type": "dict", "required": True},
            "persist": {"type": "path", "default": "/etc/sysctl.d/90-enosnet.conf"},
            "unsettable": {"type": "str", "choices": ["warn", "fail", "ignore"], "default": "warn"},
        },
        supports_check_mode=True,
    )
    values, changed, unsettable, diff = module.params["values"], [], {}, {"before": "", "after": ""}
    for key in sorted(values):
        want = canonical(values[key])
        try:
            have = read(key)
        except OSError as exc:
            unsettable[key] = "not available here (%s)" % exc.strerror
            continue
        if have == want:
            continue
        if not os.access(proc_path(key), os.W_OK):
            unsettable[key] = "read-only here (a non-initial network namespace?); current value %s" % have
            continue
        if not module.check_mode:
            try:
                write(key, want)
            except OSError as exc:
                unsettable[key] = "cannot set (%s); current value %s" % (exc.strerror, have)
                continue
        changed.append(key)
        diff["before"] += "%s = %s\n" % (key, have)
        diff["after"] += "%s = %s\n" % (key, want)
    persisted = persist(module, values)
    report(module, unsettable)
    module.exit_json(changed=bool(changed) or persisted, set=changed, unsettable=unsettable, diff=diff)


def persist(module, values):
    path = module.params["persist"]
    if not path:
        return False
    text = persist_text(values)
    try:
        with open(path) as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    if not module.check_mode:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    return True


def report(module, unsettable):
    mode = module.params["unsettable"]
    lines = ["%s: %s" % (key, why) for key, why in sorted(unsettable.items())]
    if lines and mode == "fail":
        module.fail_json(msg="sysctl keys not set: " + "; ".join(lines), unsettable=unsettable)
    if lines and mode == "warn":
        for line in lines:
            module.warn("sysctl " + line)


if __name__ == "__main__":
    main()
