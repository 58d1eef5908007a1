#!/usr/bin/env bash
# The 10-minute benchmark video: every spoken line of the moments corpus (bench/moments/scripts.ru.txt,
# tags and headers left out) read by festival over ffmpeg's test pattern, 1280x720 (via
# assets/demo/make-demo.sh), cut to the first 600 s, with the lines' own timings as subtitles.
#   bench/long-video.sh [OUT_DIR]      # writes OUT_DIR/ten.mp4 and OUT_DIR/ten.srt (about 6 min)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-out/long}
mkdir -p "$out"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
grep -v -E '^(#|==|\s*$)' "$here/moments/scripts.ru.txt" | sed -E 's/^\[[a-z]+\] //' > "$tmp/script.txt"
SRT=$tmp/all.srt "$here/../assets/demo/make-demo.sh" "$tmp/script.txt" "$tmp/all.mp4" >&2
ffmpeg -v error -y -i "$tmp/all.mp4" -t 600 -c copy "$out/ten.mp4"
# The subtitles that end within the 600 s.
python3 - "$tmp/all.srt" "$out/ten.srt" <<'PY'
import sys
def secs(t):
    h, m, r = t.split(":"); s, ms = r.split(",")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
blocks = open(sys.argv[1], encoding="utf-8").read().strip().split("\n\n")
kept = [b for b in blocks if secs(b.split("\n")[1].split(" --> ")[1]) <= 600]
open(sys.argv[2], "w", encoding="utf-8").write("\n\n".join(kept) + "\n")
PY
echo "$out/ten.mp4, $out/ten.srt"
