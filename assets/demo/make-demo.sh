#!/usr/bin/env bash
# Builds the demo video: Russian speech by festival (voice msu_ru_nsh_clunits) over ffmpeg's
# test pattern, 1280x720, H.264/AAC. Needs: festival festvox-ru ffmpeg (Debian packages).
#   assets/demo/make-demo.sh [SCRIPT.txt] [OUT.mp4] [SIZE] [PAUSE_SECS]
# With SRT=FILE it also writes the lines' own timings as subtitles (each line from where its speech
# starts to where it ends, the pause left out).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
script=${1:-$here/script.ru.txt}
out=${2:-$here/demo.mp4}
size=${3:-1280x720}
pause=${4:-1.2}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
n=0
: > "$tmp/list.txt"
at=0; : > "$tmp/subs.srt"
while IFS= read -r line; do
  [[ -z "$line" ]] && continue
  n=$((n+1))
  printf '%s\n' "$line" > "$tmp/$n.txt"
  text2wave -eval '(voice_msu_ru_nsh_clunits)' "$tmp/$n.txt" -o "$tmp/$n.raw.wav" </dev/null 2>/dev/null
  # Same format for every piece, then a pause after it.
  ffmpeg -loglevel error -y -i "$tmp/$n.raw.wav" -af "apad=pad_dur=$pause" -ar 16000 -ac 1 "$tmp/$n.wav" </dev/null
  echo "file '$tmp/$n.wav'" >> "$tmp/list.txt"
  if [[ -n ${SRT:-} ]]; then
    said=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$tmp/$n.raw.wav")
    whole=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$tmp/$n.wav")
    python3 - "$n" "$at" "$said" "$line" >> "$tmp/subs.srt" <<'PY'
import sys
n, at, said, line = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
t = lambda s: "%02d:%02d:%02d,%03d" % (s // 3600, s // 60 % 60, s % 60, round(s * 1000) % 1000)
print(f"{n}\n{t(at)} --> {t(at + said)}\n{line}\n")
PY
    at=$(python3 -c "print($at + $whole)")
  fi
done < "$script"
ffmpeg -loglevel error -y -f concat -safe 0 -i "$tmp/list.txt" -c:a pcm_s16le "$tmp/speech.wav"
dur=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$tmp/speech.wav")
ffmpeg -loglevel error -y -f lavfi -i "testsrc=size=$size:rate=25" -i "$tmp/speech.wav" \
  -t "$dur" -c:v libx264 -preset veryfast -crf 30 -pix_fmt yuv420p -g 50 \
  -c:a aac -b:a 64k -ar 44100 -ac 1 -movflags +faststart "$out"
[[ -n ${SRT:-} ]] && cp "$tmp/subs.srt" "$SRT"
echo "$out: $(printf '%.1f' "$dur") s, $n lines"
