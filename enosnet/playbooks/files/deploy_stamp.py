"""deploy.yml's quick check: is this host as the last deploy with the same inputs left it?

Run on the host by ``python3 -c`` (stdlib only, the Pythons the roles' modules support):

    record STAMP DIGEST PROBES   run the roles' probe commands (a JSON list of argvs) and write
                                 STAMP (0600): the inputs' DIGEST, the probes and a hash of their output
    check STAMP DIGEST           print "current" when STAMP holds DIGEST and the same probes print the
                                 same output now; otherwise remove STAMP and print why not

The probes are the commands the roles run anyway to decide what to change (installed packages, checksums
of files, whether the agent runs, kernel parameters), so a host whose probes print what they printed
right after a complete deploy needs nothing from the same deploy again.
"""

import hashlib
import json
import os
import subprocess
import sys


def observe(probes):
    """A hash of every probe's exit code and output."""
    digest = hashlib.sha256()
    environ = dict(os.environ, LC_ALL="C")
    for argv in probes:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environ)
        digest.update(json.dumps([argv, done.returncode]).encode() + b"\0" + done.stdout + b"\0")
    return digest.hexdigest()


def record(path, inputs, probes):
    stamp = {"inputs": inputs, "probes": probes, "state": observe(probes)}
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o755, exist_ok=True)
    tmp = "%s.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(stamp, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    print("recorded")


def check(path, inputs):
    try:
        with open(path) as handle:
            stamp = json.load(handle)
    except (OSError, ValueError):
        print("no stamp")
        return
    if stamp.get("inputs") != inputs:
        verdict = "inputs changed"
    elif observe(stamp.get("probes") or []) != stamp.get("state"):
        verdict = "host changed"
    else:
        print("current")
        return
    os.unlink(path)  # a later deploy must not trust it, whatever this one does
    print(verdict)


def main(argv):
    if len(argv) == 4 and argv[0] == "record":
        record(argv[1], argv[2], json.loads(argv[3]))
    elif len(argv) == 3 and argv[0] == "check":
        check(argv[1], argv[2])
    else:
        sys.exit("usage: record STAMP DIGEST PROBES | check STAMP DIGEST")


main(sys.argv[1:])
