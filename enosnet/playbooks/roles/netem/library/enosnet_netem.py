#!/usr/bin/python
"""Ansible module: network emulation through enosnet's emulation engine on the host (apply, clear, query)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: enosnet_netem
short_description: Apply, clear or report network emulation through enosnet's emulation engine
description:
  - Hands the role's variables to the emulation engine (impaird.py, which the role copies to the host), the
    same engine that enosnet's bench uses for a run's conditions, so the same request gets the same qdiscs.
  - Per interface, egress and (through an ifb device) ingress constraints; per destination address or prefix
    (IPv4 or IPv6), constraints chosen by u32 filters. With the netem backend each constraint is an HTB class
    (its rate, else unlimited) holding a netem qdisc; without netem in the kernel, the engine's userspace
    queue gives delay, jitter and loss, and HTB the rate.
  - The engine records what it added with its undo commands in O(impaird_state_dir); a run with the same
    specification still in place changes nothing, and C(state=absent) removes exactly what was recorded.
  - Bad values are refused before anything changes, naming the entry (C(interfaces[0].delay)); a failed
    command is reported with its command line and error after the engine removed what that run added.
options:
  state:
    description: present (apply), absent (clear) or query (report, change nothing).
    type: str
    choices: [present, absent, query]
    default: present
  interfaces:
    description: >-
      Per-interface constraints; keys device, delay, jitter, loss, rate (and the engine's other impairments),
      ingress (a dict of the same impairments).
    type: list
    elements: dict
    default: []
  destinations:
    description: Per-destination constraints; keys device, dest, delay, jitter, loss, rate (and the others).
    type: list
    elements: dict
    default: []
  backend:
    description: >-
      netem (the kernel's qdisc), nfqueue (the engine's userspace queue, for kernels without netem), or auto
      (netem where the kernel has it). tc and impaird are the older names of netem and nfqueue.
    type: str
    choices: [auto, netem, nfqueue, tc, impaird]
    default: auto
  impaird_path:
    description: Where the engine (impaird.py) is on the host; run with the module's own Python.
    type: path
    default: /var/lib/enosnet-emu/impaird.py
  impaird_state_dir:
    description: The engine's state folder on the host (one per host, whoever applied).
    type: path
    default: /run/enosnet-emu
"""

import json
import os
import subprocess
import sys

from ansible.module_utils.basic import AnsibleModule

ALIASES = {"tc": "netem", "impaird": "nfqueue"}


class SpecError(ValueError):
    """The caller's specification is invalid (the engine exited 2)."""


class EngineError(RuntimeError):
    """The engine failed on the host (a command it ran, or the engine missing)."""


def engine(params, *args):
    """Run the engine with the module's Python; its standard output."""
    if not os.path.exists(params["impaird_path"]):
        raise EngineError("the emulation engine is not at %s (the netem role copies it there)" % params["impaird_path"])
    argv = [sys.executable, params["impaird_path"], *args, "--state-dir", params["impaird_state_dir"]]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    why = (proc.stderr or proc.stdout).strip().replace("impaird: bad config: ", "").replace("impaird: ", "")
    if proc.returncode == 2:
        raise SpecError(why)
    if proc.returncode != 0:
        raise EngineError(why)
    return proc.stdout


def tc_text(devices):
    """device -> what ``tc qdisc show`` and ``tc class show`` say about it."""
    out = {}
    for device in devices:
        text = ""
        for what in ("qdisc", "class"):
            text += subprocess.run(["tc", what, "show", "dev", device], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, universal_newlines=True).stdout
        out[device] = text.strip()
    return out


def report(shown):
    """device -> tc text of the qdiscs the engine added, and 'impaird' -> its constraints, daemon and counters."""
    undo = [argv for step in shown.get("undo", []) for argv in step]
    devices = sorted({argv[argv.index("dev") + 1] for argv in undo if argv[:1] == ["tc"] and "dev" in argv[:-1]})
    out = tc_text(devices)
    if not shown.get("applied"):
        return out
    config = shown.get("config") or {}
    lines = ["backend %s" % config.get("backend")]
    daemon = shown.get("daemon")
    if daemon:
        lines.append("daemon pid %s %s" % (daemon.get("pid"), "alive" if daemon.get("alive") else "DEAD"))
    queues = ((shown.get("stats") or {}).get("queues")) or {}
    for c in config.get("constraints", []):
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


def act(module, params):
    state = params["state"]
    installed = os.path.exists(params["impaird_path"])
    if state in ("query", "absent"):
        shown = json.loads(engine(params, "show")) if installed else {"applied": False}
        backend = (shown.get("config") or {}).get("backend")
        if state == "query":
            return {"changed": False, "backend": backend, "tc": report(shown)}
        if shown.get("applied") and not module.check_mode:
            engine(params, "clear")
        return {"changed": bool(shown.get("applied")), "backend": backend}
    backend = ALIASES.get(params["backend"], params["backend"])
    config = json.dumps({"interfaces": params["interfaces"], "destinations": params["destinations"]})
    args = ["apply", "--netem-vars", "--config", config, "--backend", backend]
    if module.check_mode:
        if not installed:  # the role's copy did not happen: check mode
            return {"changed": True, "backend": backend, "commands": ["install the engine", "apply"]}
        planned = json.loads(engine(params, *args, "--check"))
        return {"changed": planned["changed"], "backend": planned["backend"], "commands": planned["commands"]}
    shown = json.loads(engine(params, *args))
    return {"changed": shown.get("changed", True), "backend": (shown.get("config") or {}).get("backend"),
            "tc": report(shown)}


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "absent", "query"], "default": "present"},
            "interfaces": {"type": "list", "elements": "dict", "default": []},
            "destinations": {"type": "list", "elements": "dict", "default": []},
            "backend": {"type": "str", "choices": ["auto", "netem", "nfqueue", "tc", "impaird"], "default": "auto"},
            "impaird_path": {"type": "path", "default": "/var/lib/enosnet-emu/impaird.py"},
            "impaird_state_dir": {"type": "path", "default": "/run/enosnet-emu"},
        },
        supports_check_mode=True,
    )
    try:
        result = act(module, module.params)
    except SpecError as exc:
        module.fail_json(msg="invalid netem specification: %s" % exc)
    except EngineError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
