#!/usr/bin/env bash
# Builds the malformed-media corpus (31 cases): files an attacker could send the bot or give the command
# line, each with what `viralclip clip` must answer. cli/tests/hostile.rs runs every case (exit
# code, one line of error, no panic, bounded memory and time, no file outside the output
# directory, no network open); a person can run the cases by hand from the list.
#
#   scripts/hostile-media.sh DIR PORT
#
# DIR gets the files and DIR/cases.tsv: one case a line, tab-separated: its name, the input, the
# subtitles given with it (or -), and the exit codes allowed (0 and/or 2, comma-separated).
# PORT is the canary HTTP server on 127.0.0.1 that playlists point at: nothing may connect to it.
set -euo pipefail
dir=${1:?usage: hostile-media.sh DIR PORT}
port=${2:?usage: hostile-media.sh DIR PORT}
mkdir -p "$dir"
cd "$dir"
canary="http://127.0.0.1:$port"
ff() { ffmpeg -nostdin -loglevel error -y "$@"; }
cases=cases.tsv
: >"$cases"
case_() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$cases"; }

# A small honest video and subtitles to build on: 6 s of testsrc with a tone, 320×240.
ff -f lavfi -i testsrc=size=320x240:rate=25:duration=6 -f lavfi -i sine=duration=6 \
  -c:v libx264 -preset ultrafast -g 25 -c:a aac -movflags +faststart honest.mp4
cat >honest.srt <<'EOF'
1
00:00:00,500 --> 00:00:03,000
Привет всем, это проверка.

2
00:00:03,000 --> 00:00:05,500
Здесь много слов и смысла.
EOF

# Playlists and concat lists disguised as video: they would open other files and addresses.
printf '#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n%s/hls-segment.ts\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n' "$canary" >hls.mp4
case_ hls-as-mp4 hls.mp4 honest.srt 2
printf 'ffconcat version 1.0\nfile %s/concat.mp4\nfile /etc/passwd\n' "$canary" >concat.mp4
case_ concat-as-mp4 concat.mp4 honest.srt 2
# HLS behind an AVI header (the classic FFmpeg SSRF shape: a playlist where a container is
# expected).
{ printf 'RIFF\x00\x10\x00\x00AVI LIST\x00\x01\x00\x00hdrl'; cat hls.mp4; } >hls-in.avi
case_ hls-in-avi hls-in.avi honest.srt 2
printf '<?xml version="1.0"?><MPD><Period><AdaptationSet><Representation><BaseURL>%s/dash</BaseURL></Representation></AdaptationSet></Period></MPD>\n' "$canary" >dash.mp4
case_ dash-as-mp4 dash.mp4 honest.srt 2
printf '[playlist]\nFile1=%s/pls\nNumberOfEntries=1\n' "$canary" >pls.mkv
case_ pls-as-mkv pls.mkv honest.srt 2

# Broken containers.
: >empty.mp4
case_ empty-file empty.mp4 honest.srt 2
head -c 300000 /dev/urandom >random.mp4
case_ random-bytes random.mp4 honest.srt 2
# moov at the end (no faststart), cut off before it.
ff -f lavfi -i testsrc=size=320x240:rate=25:duration=6 -c:v libx264 -preset ultrafast moov-at-end.mp4
head -c "$(($(stat -c %s moov-at-end.mp4) * 3 / 4))" moov-at-end.mp4 >truncated-moov.mp4
case_ truncated-moov truncated-moov.mp4 honest.srt 2
# moov first, the media data cut off half way: what there is may be cut, or refused.
head -c "$(($(stat -c %s honest.mp4) / 2))" honest.mp4 >truncated-mdat.mp4
case_ truncated-mdat truncated-mdat.mp4 honest.srt 0,2
printf 'this is not a video\n' >text.mp4
case_ text-as-mp4 text.mp4 honest.srt 2

# Headers that lie. Matroska stores PixelWidth (0xB0) and PixelHeight (0xBA) as 2-byte numbers
# here (256): set both to 65535, a 4-gigapixel frame, keeping every size in the file right.
ff -f lavfi -i testsrc=size=256x256:rate=25:duration=6 -f lavfi -i sine=duration=6 \
  -c:v libx264 -preset ultrafast -c:a flac huge-header.mkv
python3 - huge-header.mkv <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
for elem in (b"\xb0\x82\x01\x00", b"\xba\x82\x01\x00"):
    i = b.find(elem)
    assert i >= 0, elem
    b[i + 2:i + 4] = b"\xff\xff"
open(p, "wb").write(b)
PY
case_ 65535x65535-header huge-header.mkv honest.srt 0,2
# Segment Info's Duration (0x4489, an 8-byte float of milliseconds) set to 100 hours.
ff -i honest.mp4 -c copy hundred-hours.mkv
python3 - hundred-hours.mkv <<'PY'
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
hits = [i + 3 for i in range(len(b) - 11) if b[i:i + 3] == b"\x44\x89\x88"
        and abs(struct.unpack(">d", b[i + 3:i + 11])[0] - 6000) < 1000]
assert len(hits) == 1, hits
b[hits[0]:hits[0] + 8] = struct.pack(">d", 100 * 3600 * 1000.0)
open(p, "wb").write(b)
PY
case_ 100-hour-claim hundred-hours.mkv honest.srt 2
# Decoding bombs: 64×64 in the header, 16384×8192 frames in the stream (11 GB and 50 s to cut
# before the decoding budget); and a thousand frames a second.
ff -f lavfi -i color=c=black:size=64x64:rate=25:duration=2 -c:v libx264 -preset ultrafast -f h264 small.h264
ff -f lavfi -i color=c=black:size=16384x8192:rate=25:duration=4 -c:v libx264 -preset ultrafast -level 6.2 -f h264 big.h264
cat small.h264 big.h264 >bomb.h264
ff -r 25 -i bomb.h264 -c copy size-bomb.mkv
rm -f small.h264 big.h264 bomb.h264
case_ size-bomb size-bomb.mkv honest.srt 2
ff -f lavfi -i color=c=black:size=320x240:rate=1000:duration=6 -f lavfi -i sine=duration=6 \
  -c:v libx264 -preset ultrafast -c:a aac frame-flood.mkv
case_ frame-flood frame-flood.mkv honest.srt 2
# A video track with no frame, only sound.
ff -f lavfi -i sine=d=3 -f lavfi -i color=s=320x240:d=3 -map 0:a -map 1:v -c:v libx264 -frames:v 0 -c:a aac no-frames.mkv
case_ no-video-frames no-frames.mkv honest.srt 2

# Not regular files.
ln -sf /dev/zero zero.mp4
case_ video-is-dev-zero zero.mp4 honest.srt 2
rm -f fifo.mp4 fifo.srt && mkfifo fifo.mp4 fifo.srt
case_ video-is-fifo fifo.mp4 honest.srt 2
mkdir -p dir.mp4
case_ video-is-directory dir.mp4 honest.srt 2
ln -sf /dev/urandom urandom.srt
case_ subtitles-are-dev-urandom honest.mp4 urandom.srt 2
case_ subtitles-are-fifo honest.mp4 fifo.srt 2

# Subtitles that broke the parser or the host: non-ASCII inside timing lines (UTF-8 and
# UTF-16: the old panic), over the size cap, and 20,000 cues of one word in 200 s.
printf '1\n00:00:0ё,000 --> 00:00:02,000\nПривет\n' >timing-utf8.srt
case_ non-ascii-timing-utf8 timing-utf8.srt - 2
python3 -c "import sys; open('timing-utf16.srt','wb').write('1\n00:0я:01,000 --> 00:00:02,000\nПривет\n'.encode('utf-16'))"
case_ non-ascii-timing-utf16 timing-utf16.srt - 2
python3 - <<'PY'
with open("oversized.srt", "w") as f:
    n, t = 1, 0
    while f.tell() < 21 << 20:
        f.write(f"{n}\n00:{t // 60 % 60:02d}:{t % 60:02d},000 --> 00:{t // 60 % 60:02d}:{t % 60:02d},900\n{'слово ' * 40}\n\n")
        n, t = n + 1, (t + 1) % 3600
with open("dense.srt", "w") as f:
    for n in range(20000):
        ms = n * 10
        a, b = ms, ms + 9
        ts = lambda v: f"{v // 3600000:02d}:{v // 60000 % 60:02d}:{v // 1000 % 60:02d},{v % 1000:03d}"
        f.write(f"{n + 1}\n{ts(a)} --> {ts(b)}\nслово{n}\n\n")
PY
case_ subtitles-over-the-cap oversized.srt - 2
printf '1\n99999999999:00:01,000 --> 99999999999:00:02,000\nпереполнение\n' >overflow.srt
case_ cue-time-overflow overflow.srt - 2
printf 'WEBVTT\n\n00:00.000 --> 00:00:02.000 line:0%%\n<c.yellow><b>Привет\n\nNOTE\n\n99:99:99.999 --> 00:00:01.000\nя\n' >odd.vtt
case_ webvtt-odd odd.vtt - 0,2
# The same dense subtitles stand alone: a moment list, bounded by the duration, not the count.
case_ dense-subtitles dense.srt - 0

# Honest but unusual: AVI (MPEG-4 and MP3, time base 1/25), cut to 9:16 from half a frame off
# its grid (the subtitles start at 0.5 s): two frames on one tick once failed the MP4 muxer.
ff -f lavfi -i testsrc=size=320x240:rate=25:duration=6 -f lavfi -i sine=duration=6 \
  -c:v mpeg4 -c:a libmp3lame coarse.avi
case_ avi-coarse-time-base coarse.avi honest.srt 0

# Odd file names: a leading dash, shell syntax, a newline (an honest video under each).
cp honest.mp4 ./-rf.mp4
case_ name-leading-dash ./-rf.mp4 honest.srt 0
cp honest.mp4 '$(touch pwned).mp4'
case_ name-shell-syntax '$(touch pwned).mp4' honest.srt 0
cp text.mp4 "$(printf 'new\nline.mp4')"
case_ name-with-newline 'new\nline.mp4' honest.srt 2
cp honest.mp4 'пробел и юникод.mp4'
case_ name-unicode-spaces 'пробел и юникод.mp4' honest.srt 0
rm -f moov-at-end.mp4
echo "hostile-media: $(wc -l <"$cases") cases in $dir" >&2
