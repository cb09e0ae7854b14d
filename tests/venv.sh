#!/usr/bin/env bash
# tests/venv.sh NAME IMPORT: creates .venv-NAME at the repo root from
# tests/NAME/requirements.txt, kept apart from the project's .venv (each
# test's real client packages pin their own dependencies). Idempotent: a
# stamp newer than requirements.txt means it's done. IMPORT is Python that
# must run in it afterwards. Prints the python to use on success.
set -euo pipefail
name="$1"
check="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$root/tests/$name/requirements.txt"
venv="$root/.venv-$name"
stamp="$venv/.stamp"
python="${PYTHON:-python3}"

# Two tests may ask at once: one installs, the other waits for it.
exec 9>"$root/.venv-$name.lock"
flock 9
if [[ ! -f "$stamp" || "$req" -nt "$stamp" ]]; then
  # Start clean: pins may have changed, and a half-finished install isn't kept.
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  # Fail here, not in the test, if the packages don't import.
  "$venv/bin/python" -c "$check" >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
