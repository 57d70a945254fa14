# Sourced by scripts/run and scripts/test: make sure .venv exists and has this checkout installed.
# Usage: ensure_venv ""       -> pip install -e .
#        ensure_venv "test"   -> pip install -e .[test]
# Re-installs only when pyproject.toml changed since the last install (or the venv is new).
# PYTHON=/path/to/python3.x picks the interpreter used to create .venv (3.11 or newer).

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "error: Chatrooms needs Python 3.11 or newer on PATH (or set PYTHON=/path/to/python3.11)." >&2
    return 1
}

ensure_venv() {
    local extras="$1" spec="." python stamp want
    [ -n "$extras" ] && spec=".[$extras]"
    if [ ! -x .venv/bin/python ]; then
        python="$(find_python)"
        echo "==> creating .venv with $python ($("$python" --version 2>&1))"
        "$python" -m venv .venv
    fi
    stamp=".venv/.chatrooms-installed${extras:+-$extras}"
    want="$(cksum < pyproject.toml)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing -e $spec into .venv"
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
        echo "$want" > "$stamp"
    fi
}
