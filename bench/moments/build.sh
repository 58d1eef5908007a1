#!/usr/bin/env bash
# Builds the moments benchmark's corpus from scripts.ru.txt: each talk spoken by festival (voice
# msu_ru_nsh_clunits), one line at a time with a pause after it, into
#   OUT/NAME.mp4         320x180 test pattern + the speech (for the Whisper runs),
#   OUT/NAME.srt         one cue per spoken line, at the times it was spoken,
#   OUT/NAME.truth.json  the planted lines' spans and kinds, the talk's topic and duration.
# Needs festival, festvox-ru, ffmpeg (scripts/setup.sh). Idempotent: a talk whose files exist is
# kept. About 5 s a talk on 2 cores.
#   bench/moments/build.sh [OUT] [LIMIT]     # default out/moments, all talks
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-out/moments}
limit=${2:-1000}
pause=1.0
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

srt_time() { awk -v t="$1" 'BEGIN { ms = int(t * 1000 + 0.5); printf "%02d:%02d:%02d,%03d", ms / 3600000, (ms / 60000) % 60, (ms / 1000) % 60, ms % 1000 }'; }

talk() { # name topic lines-file
  local name=$1 topic=$2 lines=$3
  [[ -s $out/$name.truth.json && -s $out/$name.srt && -s $out/$name.mp4 ]] && return 0
  local t=0 n=0 planted="" list=$tmp/list.txt
  : >"$list"
  : >"$out/$name.srt.tmp"
  while IFS= read -r line; do
    n=$((n + 1))
    local kind="" text=$line
    if [[ $line =~ ^\[([a-z]+)\]\ (.*)$ ]]; then
      kind=${BASH_REMATCH[1]}
      text=${BASH_REMATCH[2]}
    fi
    printf '%s\n' "$text" >"$tmp/$n.txt"
    text2wave -eval "(voice_msu_ru_nsh_clunits)" "$tmp/$n.txt" -o "$tmp/$n.raw.wav" </dev/null 2>"$tmp/festival.log" || { cat "$tmp/festival.log" >&2; exit 1; }
    ffmpeg -loglevel error -y -i "$tmp/$n.raw.wav" -ar 16000 -ac 1 "$tmp/$n.speech.wav" </dev/null
    local d
    d=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$tmp/$n.speech.wav" </dev/null)
    ffmpeg -loglevel error -y -i "$tmp/$n.speech.wav" -af "apad=pad_dur=$pause" -ar 16000 -ac 1 "$tmp/$n.wav" </dev/null
    echo "file '$tmp/$n.wav'" >>"$list"
    local end
    end=$(awk -v a="$t" -v b="$d" 'BEGIN { printf "%.3f", a + b }')
    printf '%d\n%s --> %s\n%s\n\n' "$n" "$(srt_time "$t")" "$(srt_time "$end")" "$text" >>"$out/$name.srt.tmp"
    if [[ -n $kind ]]; then
      [[ -n $planted ]] && planted+=", "
      planted+="{\"start\": $t, \"end\": $end, \"kind\": \"$kind\", \"text\": \"${text//\"/}\"}"
    fi
    t=$(awk -v a="$t" -v b="$d" -v p="$pause" 'BEGIN { printf "%.3f", a + b + p }')
  done <"$lines"
  ffmpeg -loglevel error -y -f concat -safe 0 -i "$list" -c:a pcm_s16le "$tmp/speech.wav" </dev/null
  local dur
  dur=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$tmp/speech.wav" </dev/null)
  ffmpeg -loglevel error -y -f lavfi -i "testsrc=size=320x180:rate=5" -i "$tmp/speech.wav" -t "$dur" \
    -c:v libx264 -preset ultrafast -crf 35 -pix_fmt yuv420p -c:a aac -b:a 48k -ac 1 \
    -movflags +faststart "$out/$name.mp4" </dev/null
  mv "$out/$name.srt.tmp" "$out/$name.srt"
  printf '{"name": "%s", "topic": "%s", "duration": %s, "lines": %d, "planted": [%s]}\n' \
    "$name" "$topic" "$dur" "$n" "$planted" >"$out/$name.truth.json"
  echo "$name: $n lines, $(printf '%.1f' "$dur") s" >&2
}

count=0
name=""
while IFS= read -r line || [[ -n $line ]]; do
  if [[ $line =~ ^==\ ([a-z0-9-]+)\ \|\ ([a-z]+) ]]; then
    next=${BASH_REMATCH[1]} next_topic=${BASH_REMATCH[2]}
    if [[ -n $name ]] && ((count < limit)); then talk "$name" "$topic" "$tmp/talk.txt"; count=$((count + 1)); fi
    name=$next topic=$next_topic
    : >"$tmp/talk.txt"
  elif [[ -n $name && -n $line && $line != \#* ]]; then
    printf '%s\n' "$line" >>"$tmp/talk.txt"
  fi
done <"$here/scripts.ru.txt"
if [[ -n $name ]] && ((count < limit)); then talk "$name" "$topic" "$tmp/talk.txt"; fi
echo "corpus in $out" >&2
