#!/usr/bin/env bash
# Run a queue of ablation grids in the background with the code frozen at a commit, so that editing
# this checkout while they train cannot change what a grid runs (each run imports the package when
# it starts). Results go to this checkout's output folders; every grid is resumable, so a queue
# stopped anywhere (a session ending, a kill) picks up where it was when started again.
#
#   nohup setsid bash tools/grid_queue.sh tools/grid_queue.txt > ../queue.log 2>&1 &
#
# QUEUE: one grid per line, "<ablation yaml> [hybrid-pg ablate options]" (e.g. "--only hybrid");
# blank lines and lines starting with # are skipped. WORKERS (default 2) training processes per grid;
# REF (default HEAD) the commit to freeze; the frozen copy is a git worktree beside the checkout
# (../frozen-<commit>), reused when it exists. Needs the checkout's virtualenv active or PYTHON set.
set -uo pipefail
queue=${1:?usage: tools/grid_queue.sh QUEUE_FILE}
repo=$(git rev-parse --show-toplevel) || exit 2
queue=$(realpath "$queue")
python=${PYTHON:-$(command -v python)}
commit=$(git -C "$repo" rev-parse --short "${REF:-HEAD}") || exit 2
frozen=$(dirname "$repo")/frozen-$commit
if [ ! -d "$frozen" ]; then
    git -C "$repo" worktree add --detach "$frozen" "$commit" || exit 2
fi
# the two packages from the frozen tree, ahead of the editable install; PYTHONSAFEPATH keeps the
# working directory off sys.path
mkdir -p "$frozen-pkgs"
ln -sfn "$frozen/hybrid_pg" "$frozen-pkgs/hybrid_pg"
ln -sfn "$frozen/envs" "$frozen-pkgs/hybrid_pg_envs"
export PYTHONPATH="$frozen-pkgs" PYTHONSAFEPATH=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$frozen" || exit 2
"$python" -c "import hybrid_pg, sys; assert hybrid_pg.__file__.startswith('$frozen-pkgs'), hybrid_pg.__file__" || exit 2
status=0
while read -r config options; do
    case "$config" in "" | \#*) continue ;; esac
    out=$("$python" -c "import sys, yaml; f = yaml.safe_load(open(sys.argv[1])); print(f.get('output_dir', f'results/{f[\"name\"]}'))" "$config") || { status=2; continue; }
    echo "== $(date -u +%FT%H:%M) $commit $config $options"
    # shellcheck disable=SC2086  # the options are words
    "$python" -m hybrid_pg.experiments.cli ablate "$config" --out "$repo/$out" --workers "${WORKERS:-2}" --quiet $options
    rc=$?
    echo "== $(date -u +%FT%H:%M) exit $rc"
    [ $rc -eq 0 ] || status=$rc
done < "$queue"
exit $status
