#!/usr/bin/env bash
# The one-hour benchmark video (issue 27's "a one-hour video, end to end"): every spoken line of
# the moments corpus (bench/moments/scripts.ru.txt) read once by festival, then laid end to end in
# a different seeded order on each pass until the hour is full, so no two passes give the same
# windows and the scorer's cache of seen texts cannot shorten the run. The picture is the
# astronaut photograph (the face fixture) on a 1280x720 frame with a running clock, 25 fps, H.264;
# the sound Opus mono at 12 kbit/s. Small on purpose (21 MB; a device call carries 64 MiB): the still
# picture costs few bits, not less decoding.
#   bench/hour-video.sh [OUT_DIR] [SECONDS]   # OUT_DIR/hour.mp4 and OUT_DIR/hour.srt (the lines' timings)
# Needs festival festvox-ru ffmpeg and the fixtures (scripts/setup.sh). The lines' sound is kept
# in ~/.cache/viralclip-bench/lines (festival takes about 5 minutes for them once).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-out/hour}
secs=${2:-3600}
# shellcheck disable=SC1091
source "${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/fixtures.env"
face=$VIRALCLIP_FIXTURES/faces/astronaut.png
font=${VIRALCLIP_FONT:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}  # the project's font (engine/src/font.rs)
[[ -f $face ]] || { echo "no $face: run scripts/setup.sh" >&2; exit 1; }
cache=${LINES_CACHE:-$HOME/.cache/viralclip-bench/lines}
mkdir -p "$out" "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

grep -v -E '^(#|==|\s*$)' "$here/moments/scripts.ru.txt" | sed -E 's/^\[[a-z]+\] //' >"$tmp/lines.txt"
echo "== festival: $(wc -l <"$tmp/lines.txt") lines (cached in $cache)"
# Each line's sound is cached under its text's hash; lines.tsv pairs the two for the assembly.
while IFS= read -r line; do
  key=$(printf '%s' "$line" | sha1sum | cut -c1-16)
  printf '%s\t%s\n' "$key" "$line" >>"$tmp/lines.tsv"
  [[ -s $cache/$key.wav ]] && continue
  printf '%s\n' "$line" >"$tmp/line.txt"
  text2wave -eval '(voice_msu_ru_nsh_clunits)' "$tmp/line.txt" -o "$tmp/raw.wav" </dev/null 2>/dev/null
  ffmpeg -loglevel error -y -i "$tmp/raw.wav" -ar 16000 -ac 1 -c:a pcm_s16le "$cache/$key.wav" </dev/null
done <"$tmp/lines.txt"

echo "== the hour: passes in seeded orders, 1.2 s between lines"
python3 - "$tmp/lines.tsv" "$cache" "$secs" "$tmp" "$out/hour.srt" <<'PY'
import random, sys, wave
lines_file, cache, secs, tmp, srt = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
lines = [l.rstrip("\n").split("\t", 1) for l in open(lines_file, encoding="utf-8") if l.strip()]
def t(s):
    return "%02d:%02d:%02d,%03d" % (s // 3600, s // 60 % 60, s % 60, round(s * 1000) % 1000)
pause = b"\0\0" * int(16000 * 1.2)
at, n, rng, subs = 0.0, 0, random.Random(27), []
with wave.open(f"{tmp}/speech.wav", "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
    while at < secs:
        order = lines[:]
        rng.shuffle(order)
        for key, line in order:
            with wave.open(f"{cache}/{key}.wav") as r:
                pcm = r.readframes(r.getnframes())
            said = len(pcm) / 2 / 16000
            if at + said > secs:
                at = secs
                break
            n += 1
            subs.append(f"{n}\n{t(at)} --> {t(at + said)}\n{line}\n")
            w.writeframes(pcm + pause)
            at += said + 1.2
open(srt, "w", encoding="utf-8").write("\n".join(subs))
print(f"{n} lines, {at:.0f} s")
PY
ffmpeg -loglevel error -y -loop 1 -framerate 25 -i "$face" -i "$tmp/speech.wav" -t "$secs" \
  -filter_complex "[0:v]scale=-2:600,pad=1280:720:(ow-iw)/2:60:0x202830,drawtext=fontfile=$font:text='%{pts\\:hms}':x=20:y=20:fontsize=28:fontcolor=white,format=yuv420p[v]" \
  -map "[v]" -map 1:a -c:v libx264 -preset veryfast -tune stillimage -crf 34 -g 250 \
  -c:a libopus -b:a 12k -application voip -ac 1 -movflags +faststart "$out/hour.mp4"
echo "$out/hour.mp4 ($(du -h "$out/hour.mp4" | cut -f1)), $out/hour.srt"
