#!/usr/bin/env bash
# Builds FFmpeg's shared libraries for a GPU host that has none (the lent H100/H200's image), small
# enough to carry: the same FFmpeg release as this machine's Debian libavcodec (so the sonames and
# the symbol versions, LIBAVCODEC_59 and the rest, are the ones `viralclip` was linked against and
# the binary runs on them unchanged), with FFmpeg's own codecs, formats and filters, libx264 and
# libass, and nothing else external (Debian's build pulls in 159 libraries, 68 MB compressed).
#
#   scripts/build-ffmpeg-device.sh        # → $FFMPEG_DEVICE (default ~/.cache/viralclip-ffmpeg-device)/lib
#
# The source comes from Debian through apt (a private source list; the system's is not touched):
# `apt-get source` of the installed libavcodec's version. Needs nasm, libx264-dev and libass-dev
# (installed here if missing). About 15 minutes on 2 cores; nothing is rebuilt when the libraries
# are there.
set -euo pipefail
PREFIX=${FFMPEG_DEVICE:-$HOME/.cache/viralclip-ffmpeg-device}
ver=$(dpkg-query -W -f '${Version}' libavcodec-dev 2>/dev/null) \
  || { echo "libavcodec-dev is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
upstream=${ver#*:}
upstream=${upstream%%-*}
if [[ -f $PREFIX/lib/libavcodec.so.59 && $(cat "$PREFIX/VERSION" 2>/dev/null) == "$ver" ]]; then
  echo "FFmpeg $ver for the device: $PREFIX/lib (built before)"
  exit 0
fi
missing=()
for p in nasm libx264-dev libass-dev pkg-config; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== FFmpeg $ver's source (Debian)"
# A source list of our own beside the system's: deb-src for the suites the system already uses.
mkdir -p "$work/apt/lists/partial" "$work/apt/sources"
for f in /etc/apt/sources.list.d/*.sources; do
  [[ -f $f ]] && sed -E 's/^Types:.*/Types: deb-src/' "$f" >"$work/apt/sources/$(basename "$f")"
done
[[ -f /etc/apt/sources.list ]] && sed -nE 's/^deb /deb-src /p' /etc/apt/sources.list >"$work/apt/sources.list"
touch "$work/apt/sources.list"
apt_o=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=$work/apt/sources"
  -o "Dir::State::Lists=$work/apt/lists" -o "APT::Sandbox::User=root")
apt-get "${apt_o[@]}" update -qq
(cd "$work" && apt-get "${apt_o[@]}" source --download-only -qq "ffmpeg=$ver")
tar xf "$work/ffmpeg_$upstream.orig.tar.xz" -C "$work"
src=$work/ffmpeg-$upstream

echo "== configure and build (about 15 minutes on 2 cores)"
cd "$src"
# Everything FFmpeg holds itself (decoders, demuxers, filters, the parsers and bitstream filters
# they use); outside it only libx264 (the clips' encoder), libass (the captions) and zlib. No
# programs, no devices, no network, no hardware acceleration.
./configure --prefix="$PREFIX" --enable-shared --disable-static --enable-pic --enable-gpl \
  --disable-programs --disable-doc --disable-avdevice --disable-postproc --disable-network \
  --disable-autodetect --enable-zlib --enable-libx264 --enable-libass \
  --disable-debug --enable-stripping >"$work/configure.log" \
  || { tail -20 "$work/configure.log" >&2; exit 1; }
make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -30 "$work/make.log" >&2; exit 1; }
rm -rf "$PREFIX"
make install >/dev/null
echo "$ver" >"$PREFIX/VERSION"
echo "FFmpeg $ver for the device: $PREFIX/lib"
