#!/usr/bin/env bash
# Renders docs/notebook/quickstart.ipynb headless into docs/notebook/quickstart.png (the screenshot
# in docs/notebook.md): nbconvert executes it with the llmlab kernel into HTML, and headless
# Chromium photographs the page. Not part of CI. Needs: a release build, and
#   python3 -m venv target/notebook-venv && target/notebook-venv/bin/pip install jupyter_client nbconvert
#   apt-get install chromium-headless-shell   (or chromium)
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/notebook-venv
out=target/notebook-render
rm -rf "$out" && mkdir -p "$out/prefix" "$out/work"
./target/release/llmlab kernel install --prefix "$out/prefix"
export JUPYTER_PATH="$PWD/$out/prefix/share/jupyter" JUPYTER_PLATFORM_DIRS=1
# Executed in a scratch directory, so the run lands in target/, not in runs/.
cp docs/notebook/quickstart.ipynb "$out/work/"
(cd "$out/work" && "../../../$venv/bin/jupyter" nbconvert --to html --execute \
  --ExecutePreprocessor.timeout=900 --ExecutePreprocessor.kernel_name=llmlab \
  --output quickstart.html quickstart.ipynb)
cp "$out/work/quickstart.ipynb" "$out/quickstart.ipynb"
browser=$(command -v chromium-headless-shell || command -v chromium || true)
if [ -z "$browser" ] && [ -x /usr/lib/chromium/chromium-headless-shell ]; then
  browser=/usr/lib/chromium/chromium-headless-shell
fi
[ -n "$browser" ] || { echo "no headless chromium found" >&2; exit 1; }
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,1960 \
  --screenshot="$PWD/docs/notebook/quickstart.png" "file://$PWD/$out/work/quickstart.html"
echo "wrote docs/notebook/quickstart.png"
