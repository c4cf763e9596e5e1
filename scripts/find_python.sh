# Sourced by the GPU scripts: PY = the first of $PYTHON, python, python3 that can import torch.
# None can: one error line (naming the interpreters tried), exit 2. A bare image often has only
# python3, or a python without the packages; the check must not start on the wrong one.
PY=
for candidate in ${PYTHON:+"$PYTHON"} python python3; do
    if command -v "$candidate" > /dev/null 2>&1 && "$candidate" -c "import torch" 2> /dev/null; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    echo "error: no Python with torch among ${PYTHON:+\$PYTHON=$PYTHON, }python, python3:" \
         "pip install -r requirements.txt (Python 3.10 or newer), or set PYTHON" >&2
    exit 2
fi
