#!/usr/bin/env bash
# A new user's `make demo`, recorded: this checkout's last commit cloned into a scratch folder, `make demo`
# run there as a newcomer would (setup included), and everything it printed written to
# docs/demo-transcript.md with the date, the machine and the time it took.
#
#   bash scripts/demo_transcript.sh            # about 5-20 minutes of CPU, depending on the machine
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
git clone -q "$root" "$scratch/ksir"
cd "$scratch/ksir" || exit 1
commit=$(git rev-parse --short HEAD)
start=$(date +%s)
make demo > "$scratch/out.txt" 2>&1
status=$?
elapsed=$(( $(date +%s) - start ))
machine="$(nproc)-core $(uname -m) $(uname -s) ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs))"
lines=$(wc -l < "$scratch/out.txt")
{
  echo "# A new user's \`make demo\`"
  echo
  echo "Recorded $(date -u +%Y-%m-%d) on a $machine by \`bash scripts/demo_transcript.sh\`: a fresh clone of"
  echo "commit $commit, then \`make demo\` in it (setup included). It took ${elapsed} s and exited with status $status;"
  echo "it printed $lines lines, all below (the scratch folder is shown as \`~/ksir\`)."
  echo
  echo '```text'
  echo '$ make demo'
  sed "s|$scratch/ksir|~/ksir|g" "$scratch/out.txt"
  echo '```'
} > "$root/docs/demo-transcript.md"
echo "wrote $root/docs/demo-transcript.md ($lines lines of output, ${elapsed} s, exit $status)"
exit $status
