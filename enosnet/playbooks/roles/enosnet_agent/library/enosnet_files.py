#!/usr/bin/python
"""Ansible module: folders and whole files in one call, each written only when it differs."""

from __future__ import annotations

DOCUMENTATION = r"""
module: enosnet_files
short_description: Create folders and write files (root-owned, atomic, validated) in one round trip
description:
  - Creates each folder of O(dirs) that is missing and sets its mode; then, for each file of O(files),
    compares the SHA-256 of what is there with the wanted content and, only when they differ, writes it
    to a temporary file beside the target, runs the file's O(files[].validate) command on it, and moves
    it into place. Everything is owned by root.
  - One task instead of a file task per folder and a copy task per file: the agent's install costs one
    round trip per host instead of five or more.
  - Contents are never logged (they may hold a secret, or a whole program).
options:
  dirs:
    description: Folders, each {path, mode}.
    type: list
    elements: dict
    default: []
  files:
    description: >-
      Files, each {dest, mode, content or content_b64, validate}; validate is a command with %s for the
      temporary file, run before it replaces the old one.
    type: list
    elements: dict
    default: []
"""

import base64
import hashlib
import os
import shlex
import tempfile

from ansible.module_utils.basic import AnsibleModule

FILE_OPTIONS = {
    "dest": {"type": "path", "required": True},
    "mode": {"type": "str", "default": "0644"},
    "content": {"type": "str", "no_log": True},
    "content_b64": {"type": "str", "no_log": True},
    "validate": {"type": "str"},
}
DIR_OPTIONS = {"path": {"type": "path", "required": True}, "mode": {"type": "str", "default": "0755"}}


def own_as_root(module, path, mode):
    """Give the existing ``path`` this mode, owned by root; True when that changed something."""
    st = os.stat(path)
    if st.st_mode & 0o7777 == mode and st.st_uid == 0 and st.st_gid == 0:
        return False
    if not module.check_mode:
        os.chmod(path, mode)
        os.chown(path, 0, 0)
    return True


def ensure_dir(module, path, mode):
    """True when the folder was created or its mode or owner changed."""
    wanted = int(mode, 8)
    if os.path.exists(path):
        return own_as_root(module, path, wanted)
    if not module.check_mode:
        os.makedirs(path, mode=wanted)
        os.chmod(path, wanted)  # makedirs' mode is masked by the umask
        os.chown(path, 0, 0)
    return True


def sha256_of(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def wanted_bytes(spec):
    if spec.get("content_b64") is not None:
        return base64.b64decode(spec["content_b64"])
    if spec.get("content") is not None:
        return spec["content"].encode()
    return None


def write_file(module, spec):
    """True when the file was (or, in check mode, would be) written or its mode or owner changed."""
    dest, mode = spec["dest"], int(spec["mode"], 8)
    data = wanted_bytes(spec)
    if data is None:
        module.fail_json(msg="%s: give content or content_b64" % dest)
    if sha256_of(dest) == hashlib.sha256(data).hexdigest():
        return own_as_root(module, dest, mode)
    if module.check_mode:
        return True
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(dest), dir=os.path.dirname(dest))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.chown(tmp, 0, 0)
        if spec.get("validate"):
            validate(module, dest, tmp, spec["validate"])
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def validate(module, dest, tmp, command):
    if "%s" not in command:
        module.fail_json(msg="%s: validate must contain %%s (the file to check): %s" % (dest, command))
    argv = [tmp if part == "%s" else part.replace("%s", tmp) for part in shlex.split(command)]
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg="%s: failed validation (%s): %s" % (dest, command, (err or out).strip()),
                         rc=rc)


def main():
    module = AnsibleModule(
        argument_spec={
            "dirs": {"type": "list", "elements": "dict", "default": [], "options": DIR_OPTIONS},
            "files": {"type": "list", "elements": "dict", "default": [], "options": FILE_OPTIONS},
        },
        supports_check_mode=True,
    )
    changed = []
    for spec in module.params["dirs"]:
        if ensure_dir(module, spec["path"], spec["mode"]):
            changed.append(spec["path"])
    for spec in module.params["files"]:
        if write_file(module, spec):
            changed.append(spec["dest"])
    module.exit_json(changed=bool(changed), paths=changed)


if __name__ == "__main__":
    main()
