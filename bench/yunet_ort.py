#!/usr/bin/env python3
"""YuNet per frame on ONNX Runtime: the peer of `viralclip bench --video V` 's `face_detect` line.

The same model file, the same input the engine gives it (one frame of the video, scaled to 640 px
on its long side and letterboxed into 640x640, BGR as float 0..255), timed for as long as
viralclip's case runs, on as many threads. One JSON line.

    python3 bench/yunet_ort.py --model face_detection_yunet_2023mar.onnx --video assets/demo/demo.mp4
Needs `pip install onnxruntime numpy` and the ffmpeg tool.
"""
import argparse
import json
import os
import subprocess
import time

import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--video", required=True)
p.add_argument("--at", type=float, default=34.5, help="second of the frame (the bench clip's middle)")
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--secs", type=float, default=3.0)
a = p.parse_args()

# One frame at 640 px on the long side, as the framing samples it (area scaling).
w, h = map(int, subprocess.check_output(
    ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
     "-of", "csv=p=0", a.video]).decode().strip().split(","))
s = 640 / max(w, h)
fw, fh = round(w * s) // 2 * 2, round(h * s) // 2 * 2
raw = subprocess.check_output(
    ["ffmpeg", "-v", "error", "-ss", str(a.at), "-i", a.video, "-frames:v", "1",
     "-vf", f"scale={fw}:{fh}:flags=area", "-pix_fmt", "rgb24", "-f", "rawvideo", "-"])
rgb = np.frombuffer(raw, np.uint8).reshape(fh, fw, 3)
x = np.zeros((640, 640, 3), np.float32)
x[:fh, :fw] = rgb[:, :, ::-1]
x = x.transpose(2, 0, 1)[None].copy()

so = ort.SessionOptions()
so.intra_op_num_threads = a.threads
so.inter_op_num_threads = 1
sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
sess.run(None, {name: x})  # warm-up
n, t = 0, time.perf_counter()
while n < 5 or time.perf_counter() - t < a.secs:
    sess.run(None, {name: x})
    n += 1
ms = (time.perf_counter() - t) * 1000 / n
print(json.dumps({
    "case": "face_detect", "engine": f"onnxruntime {ort.__version__}", "model": os.path.basename(a.model),
    "frame": f"{fw}x{fh}", "input": "640x640", "threads": a.threads, "ms_per_frame": round(ms, 2), "runs": n,
}))
