#!/usr/bin/python
"""Ansible module: network emulation with tc, applied as a diff and cleared exactly."""

from __future__ import annotations

DOCUMENTATION = r"""
module: enosnet_netem
short_description: Apply or clear network emulation with tc (netem, htb, u32, ifb) or impaird
description:
  - Per interface, egress delay/jitter/loss/rate (htb class + netem leaf) and ingress
    constraints (redirected through an ifb device created inside the host's network namespace).
  - Per destination address (IPv4 or IPv6, single address or prefix), an htb class with its own
    netem leaf selected by a u32 filter on the destination address.
  - What was applied is recorded in O(state_file); a run with the same specification whose qdiscs
    are still in place changes nothing, and C(state=absent) removes exactly what was recorded
    (root and ingress qdiscs, ifb devices), nothing else.
  - Every tc or ip command that fails is reported with its command line and error; a failed apply
    removes what it had added so far.
  - With O(backend=impaird) (kernels built without the netem qdisc) the same specification is handed to
    impaird, enosnet's userspace emulator (NFQUEUE for delay, jitter and loss; htb for rate), which must
    already be at O(impaird_path); the backend in use is recorded, so clearing and querying need no choice.
options:
  state:
    description: present (apply), absent (clear) or query (report, change nothing).
    type: str
    choices: [present, absent, query]
    default: present
  interfaces:
    description: >-
      Per-interface constraints; keys device, delay, jitter, loss, rate,
      ingress (a dict of delay, jitter, loss, rate).
    type: list
    elements: dict
    default: []
  destinations:
    description: Per-destination constraints; keys device, dest, delay, jitter, loss, rate.
    type: list
    elements: dict
    default: []
  state_file:
    description: Where the applied specification and what it added are recorded.
    type: path
    default: /run/enosnet/netem.json
  unlimited_rate:
    description: Rate of htb classes that carry no rate limit.
    type: str
    default: 100gbit
  backend:
    description: tc (the kernel's netem qdisc) or impaird (userspace, for kernels without netem).
    type: str
    choices: [tc, impaird]
    default: tc
  impaird_path:
    description: Where impaird.py is on the host (run with the module's own Python).
    type: path
    default: /var/lib/enosnet-emu/impaird.py
  impaird_state_dir:
    description: impaird's state folder on the host (one impaird per host, whoever applied it).
    type: path
    default: /run/enosnet-emu
"""

import ipaddress
import json
import os
import re
import subprocess
import sys

from ansible.module_utils.basic import AnsibleModule

TIME = re.compile(r"\d+(\.\d+)?(us|ms|s)", re.ASCII)
LOSS = re.compile(r"\d+(\.\d+)?%", re.ASCII)
RATE = re.compile(r"\d+(\.\d+)?(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)", re.ASCII)
DEVICE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
SHAPE_KEYS = ("delay", "jitter", "loss", "rate")
FORMATS = {"delay": (TIME, "like 20ms, 500us or 1s"), "jitter": (TIME, "like 5ms"),
           "loss": (LOSS, "like 1% or 0.5%"), "rate": (RATE, "like 100mbit, 1gbit or 10mbps")}
QUANTUM = "60000"


class SpecError(ValueError):
    """The caller's specification is invalid."""


class TcError(RuntimeError):
    """A tc or ip command failed."""


def check_shape(where, shape):
    """The shape's delay/jitter/loss/rate, each checked against its format."""
    out = {}
    for key, value in (shape or {}).items():
        if key not in SHAPE_KEYS:
            raise SpecError("%s: unknown key %r (expected %s)" % (where, key, ", ".join(SHAPE_KEYS)))
        if value in (None, ""):
            continue
        pattern, example = FORMATS[key]
        text = str(value).strip().lower()
        if not pattern.fullmatch(text):
            raise SpecError("%s.%s=%r: not a %s %s" % (where, key, value, key, example))
        if key == "loss" and float(text[:-1]) > 100:
            raise SpecError("%s.loss=%r: above 100%%" % (where, value))
        out[key] = text
    if "jitter" in out and "delay" not in out:
        raise SpecError("%s: jitter needs a delay" % where)
    return out


def check_device(where, device):
    if not DEVICE.fullmatch(str(device or "")):
        raise SpecError("%s.device=%r: not an interface name (1-15 letters, digits, _.:-)" % (where, device))
    return str(device)


def normalise(interfaces, destinations):
    """Validated, canonical form of the whole specification (what the state file records)."""
    spec = {}
    for i, item in enumerate(interfaces):
        where = "interfaces[%d]" % i
        unknown = set(item) - {"device", "ingress", *SHAPE_KEYS}
        if unknown:
            raise SpecError("%s: unknown keys %s" % (where, ", ".join(sorted(unknown))))
        dev = spec.setdefault(check_device(where, item.get("device")), {"egress": {}, "ingress": {}, "dests": []})
        dev["egress"] = check_shape(where, {k: item.get(k) for k in SHAPE_KEYS})
        dev["ingress"] = check_shape(where + ".ingress", item.get("ingress"))
    for i, item in enumerate(destinations):
        where = "destinations[%d]" % i
        unknown = set(item) - {"device", "dest", *SHAPE_KEYS}
        if unknown:
            raise SpecError("%s: unknown keys %s" % (where, ", ".join(sorted(unknown))))
        try:
            net = ipaddress.ip_network(str(item.get("dest")), strict=False)
        except ValueError:
            raise SpecError("%s.dest=%r: not an IPv4/IPv6 address or prefix" % (where, item.get("dest"))) from None
        shape = check_shape(where, {k: item.get(k) for k in SHAPE_KEYS})
        if not shape:
            raise SpecError("%s: no delay, loss or rate given" % where)
        dev = spec.setdefault(check_device(where, item.get("device")), {"egress": {}, "ingress": {}, "dests": []})
        dev["dests"].append({"dest": str(net), **shape})
    return spec


def ifb_name(device):
    return ("ifb" + device.replace(".", "").replace(":", ""))[:15]


def netem_args(shape):
    args = []
    if "delay" in shape:
        args += ["delay", shape["delay"]] + ([shape["jitter"]] if "jitter" in shape else [])
    if "loss" in shape:
        args += ["loss", shape["loss"]]
    return args


def htb_commands(device, default_shape, dests, unlimited):
    """tc argv lists shaping ``device``'s egress: a default class, one class per destination."""
    cmds = [["qdisc", "add", "dev", device, "root", "handle", "1:", "htb", "default", "1"]]
    for minor, shape in [(1, default_shape)] + [(i + 2, d) for i, d in enumerate(dests)]:
        rate = shape.get("rate", unlimited)
        cmds.append(["class", "add", "dev", device, "parent", "1:", "classid", "1:%x" % minor,
                     "htb", "rate", rate, "ceil", rate, "quantum", QUANTUM])
        if netem_args(shape):
            cmds.append(["qdisc", "add", "dev", device, "parent", "1:%x" % minor, "handle", "%x:" % (minor + 16),
                         "netem", "limit", "100000", *netem_args(shape)])
    for i, dest in enumerate(dests):
        net = ipaddress.ip_network(dest["dest"])
        proto, match = ("ip", "ip") if net.version == 4 else ("ipv6", "ip6")
        cmds.append(["filter", "add", "dev", device, "parent", "1:", "protocol", proto, "prio", str(net.version),
                     "u32", "match", match, "dst", str(net), "flowid", "1:%x" % (i + 2)])
    return cmds


def plan(spec, unlimited):
    """Steps to apply ``spec``: (argv, undo argv or None), in order."""
    steps = []
    for device, dev in sorted(spec.items()):
        if dev["egress"] or dev["dests"]:
            undo = ["tc", "qdisc", "del", "dev", device, "root"]
            for i, cmd in enumerate(htb_commands(device, dev["egress"], dev["dests"], unlimited)):
                steps.append((["tc", *cmd], undo if i == 0 else None))
        if dev["ingress"]:
            ifb = ifb_name(device)
            steps.append((["ip", "link", "add", ifb, "type", "ifb"], ["ip", "link", "del", ifb]))
            steps.append((["ip", "link", "set", ifb, "up"], None))
            steps.append((["tc", "qdisc", "add", "dev", device, "handle", "ffff:", "ingress"],
                          ["tc", "qdisc", "del", "dev", device, "ingress"]))
            steps.append((["tc", "filter", "add", "dev", device, "parent", "ffff:", "protocol", "all", "u32",
                           "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb], None))
            for cmd in htb_commands(ifb, dev["ingress"], [], unlimited):
                steps.append((["tc", *cmd], None))
    return steps


def run(argv):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip()
        if "qdisc kind is unknown" in why:
            kind = next((t for t in argv if t in ("netem", "htb", "ingress", "mirred")), "?")
            why += " (this kernel lacks that qdisc: load it, e.g. modprobe sch_%s, or use a kernel with it)" % kind
        raise TcError("`%s` failed (rc %d): %s" % (" ".join(argv), proc.returncode, why))
    return proc.stdout


def undo_all(undos):
    """Run undo commands, last added first; returns the errors of those that failed."""
    errors = []
    for argv in reversed(undos):
        try:
            run(argv)
        except TcError as exc:
            errors.append(str(exc))
    return errors


def apply_steps(steps):
    """Run every step; on a failure undo what was added and raise the failure."""
    undos = []
    for argv, undo in steps:
        try:
            run(argv)
        except TcError as exc:
            leftovers = undo_all(undos)
            extra = ("; rollback also failed: " + "; ".join(leftovers)) if leftovers else ""
            raise TcError(str(exc) + extra) from exc
        if undo:
            undos.append(undo)
    return undos


def load_state(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def save_state(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def still_in_place(spec):
    """Whether the qdiscs a recorded spec added are still there (a reboot or a hand `tc del` removes them)."""
    for device, dev in spec.items():
        shown = run(["tc", "qdisc", "show", "dev", device])
        if (dev["egress"] or dev["dests"]) and "qdisc htb 1: root" not in shown:
            return False
        if dev["ingress"] and "qdisc ingress ffff:" not in shown:
            return False
    return True


def show(spec):
    devices = sorted(set(spec) | {ifb_name(d) for d, v in spec.items() if v["ingress"]})
    return tc_text(devices)


def tc_text(devices):
    """device -> what ``tc qdisc show`` and ``tc class show`` say about it."""
    return {d: (run(["tc", "qdisc", "show", "dev", d]) + run(["tc", "class", "show", "dev", d])).strip()
            for d in devices}


def impaird(params, *args):
    """Run impaird with the module's Python; its output (JSON for apply and show)."""
    argv = [sys.executable, params["impaird_path"], *args, "--state-dir", params["impaird_state_dir"]]
    if not os.path.exists(params["impaird_path"]):
        raise TcError("impaird is not at %s (the netem role copies it there when it chooses the impaird backend)"
                      % params["impaird_path"])
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if proc.returncode == 2:
        raise SpecError(proc.stderr.strip())
    if proc.returncode != 0:
        shown = " ".join(a if len(a) < 80 else a[:77] + "..." for a in argv)
        raise TcError("`%s` failed (rc %d): %s" % (shown, proc.returncode, (proc.stderr or proc.stdout).strip()))
    return proc.stdout


def impaird_config(params):
    return json.dumps({"interfaces": params["interfaces"], "destinations": params["destinations"]})


def impaird_in_place(params, recorded):
    """Whether what impaird shows is still what the role applied (and its daemon, if it needs one, runs)."""
    shown = json.loads(impaird(params, "show"))
    daemon = shown.get("daemon")
    return bool(shown.get("applied")) and shown.get("config") == recorded.get("config") and \
        (daemon is None or daemon.get("alive"))


def impaird_report(shown):
    """device -> tc text of the qdiscs impaird added, and 'impaird' -> its constraints, daemon and counters."""
    undo = [argv for step in shown.get("undo", []) for argv in step]
    devices = sorted({argv[argv.index("dev") + 1] for argv in undo if argv[:1] == ["tc"] and "dev" in argv[:-1]})
    out = tc_text(devices)
    if not shown.get("applied"):
        return out
    lines = []
    daemon = shown.get("daemon")
    if daemon:
        lines.append("daemon pid %s %s" % (daemon.get("pid"), "alive" if daemon.get("alive") else "DEAD"))
    queues = ((shown.get("stats") or {}).get("queues")) or {}
    for c in (shown.get("config") or {}).get("constraints", []):
        knobs = ["%s %gms" % (k[:-2], c[k] * 1000) for k in ("delay_s", "jitter_s") if c.get(k)]
        knobs += ["%s %g%%" % (k, c[k] * 100) for k in ("loss", "duplicate", "reorder") if c.get(k)]
        knobs += ["rate %gmbit" % (c["rate_bps"] / 1e6)] if c.get("rate_bps") else []
        line = "%s %s%s: %s" % (c.get("direction"), c.get("destination"),
                                " on %s" % c["device"] if c.get("device") else "", ", ".join(knobs))
        counters = queues.get(str(c.get("queue"))) if c.get("queue") is not None else None
        if counters:
            line += " (queue %s: received %s, dropped %s, held %s)" % (
                c["queue"], counters.get("received"), counters.get("dropped"), counters.get("held"))
        lines.append(line)
    out["impaird"] = "\n".join(lines)
    return out


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "absent", "query"], "default": "present"},
            "interfaces": {"type": "list", "elements": "dict", "default": []},
            "destinations": {"type": "list", "elements": "dict", "default": []},
            "state_file": {"type": "path", "default": "/run/enosnet/netem.json"},
            "unlimited_rate": {"type": "str", "default": "100gbit"},
            "backend": {"type": "str", "choices": ["tc", "impaird"], "default": "tc"},
            "impaird_path": {"type": "path", "default": "/var/lib/enosnet-emu/impaird.py"},
            "impaird_state_dir": {"type": "path", "default": "/run/enosnet-emu"},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        spec = normalise(params["interfaces"], params["destinations"])
        if not RATE.fullmatch(params["unlimited_rate"]):
            raise SpecError("unlimited_rate=%r: not a rate like 100gbit" % params["unlimited_rate"])
    except SpecError as exc:
        module.fail_json(msg="invalid netem specification: %s" % exc)
    recorded = load_state(params["state_file"])
    try:
        result = act(module, params, spec, recorded)
    except TcError as exc:
        module.fail_json(msg=str(exc))
    except SpecError as exc:
        module.fail_json(msg="invalid netem specification: %s" % exc)
    module.exit_json(**result)


def backend_of(recorded):
    return recorded.get("backend", "tc") if recorded else None


def remove(params, recorded):
    """Undo what ``recorded`` says was applied, with the backend that applied it, and forget it."""
    if backend_of(recorded) == "impaird":
        impaird(params, "clear")
    else:
        errors = undo_all(recorded["undo"])
        if errors:
            raise TcError("clearing netem: " + "; ".join(errors))
    os.unlink(params["state_file"])


def act(module, params, spec, recorded):
    path = params["state_file"]
    backend = params["backend"]
    if params["state"] == "query":
        current = recorded["spec"] if recorded else {}
        if backend_of(recorded) == "impaird":
            return {"changed": False, "spec": current, "backend": "impaird",
                    "tc": impaird_report(json.loads(impaird(params, "show")))}
        return {"changed": False, "spec": current, "backend": backend_of(recorded), "tc": show(current)}
    if params["state"] == "absent" or not spec:
        if not recorded:
            return {"changed": False, "spec": {}}
        if not module.check_mode:
            remove(params, recorded)
        return {"changed": True, "spec": {}, "removed": recorded["spec"], "backend": backend_of(recorded)}
    if recorded and recorded["spec"] == spec and backend_of(recorded) == backend:
        in_place = impaird_in_place(params, recorded) if backend == "impaird" else still_in_place(spec)
        if in_place:
            return {"changed": False, "spec": spec, "backend": backend}
    if backend == "impaird":
        return apply_impaird(module, params, spec, recorded)
    steps = plan(spec, params["unlimited_rate"])
    if module.check_mode:
        return {"changed": True, "spec": spec, "backend": backend, "commands": [" ".join(a) for a, _ in steps]}
    if recorded:
        remove(params, recorded)
    undos = apply_steps(steps)
    save_state(path, {"backend": "tc", "spec": spec, "undo": undos})
    return {"changed": True, "spec": spec, "backend": backend, "commands": [" ".join(a) for a, _ in steps]}


def apply_impaird(module, params, spec, recorded):
    """Hand the role's variables to impaird (it replaces what it applied before and rolls back on failure)."""
    if module.check_mode:
        if not os.path.exists(params["impaird_path"]):  # the role's copy did not happen: check mode
            return {"changed": True, "spec": spec, "backend": "impaird", "commands": ["impaird apply"]}
        commands = impaird(params, "apply", "--dry-run", "--netem-vars", "--config", impaird_config(params))
        return {"changed": True, "spec": spec, "backend": "impaird", "commands": commands.splitlines()}
    if recorded and backend_of(recorded) != "impaird":
        remove(params, recorded)
    shown = json.loads(impaird(params, "apply", "--netem-vars", "--config", impaird_config(params)))
    save_state(params["state_file"], {"backend": "impaird", "spec": spec, "config": shown.get("config")})
    return {"changed": True, "spec": spec, "backend": "impaird", "tc": impaird_report(shown)}


if __name__ == "__main__":
    main()
