"""Check the CUDA path end to end and time it (run on a machine with a GPU; CI has none).

    python bench/gpu_check.py                                  # the installed demo model
    python bench/gpu_check.py --weights W.safetensors --labels labels.txt --images a.jpg b.jpg

Checks: the default device is CUDA; CPU and CUDA give the same logits (with TF32 convolutions off,
and how far they drift with TF32 on); activations and Grad-CAM run on CUDA, come back on the CPU and
leave no hooks; the view capture works. Times: ``m.net`` against a naive eager fp32 NCHW forward on
the same GPU, in the same run; predictions (``m.logits``) against ``m.net``, and fast mode (fp16)
against fp32 predictions with its top-1 agreement. Prints one JSON object per line and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import xviz  # noqa: E402
from xviz import attributions, flows  # noqa: E402

failures = []


def report(name, value, ok=None, **extra):
    print(json.dumps({"name": name, "value": value, "ok": ok, **extra}), flush=True)
    if ok is False:
        failures.append(name)


def cuda_seconds(fn, repeat=50, warmup=10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def no_hooks(net) -> bool:
    return not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in net.modules())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="weights file; default: the kitchenware demo model")
    p.add_argument("--labels")
    p.add_argument("--images", nargs="*", default=[])
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check", file=sys.stderr)
        return 2

    report("device", xviz.device.describe(xviz.device.pick_device()), xviz.device.pick_device().type == "cuda")
    source = args.weights or "kitchenware"
    xviz.device.configure(torch.device("cuda"))  # the app's settings: TF32 off unless XVIZ_ALLOW_TF32=1
    cpu = xviz.load_model(source, labels=args.labels, device="cpu")
    gpu = xviz.load_model(source, labels=args.labels, device="cuda")
    report("model", gpu.source, str(next(gpu.net.parameters()).device).startswith("cuda"))
    paths = [Path(p) for p in args.images] or sorted(
        (xviz.weights.kitchenware_dir() / "datasets" / "kitchenware-data" / "images").glob("*.jpg"))[:3]
    images = [xviz.load_image(p.read_bytes()) for p in paths]

    for size in (gpu.input_size, 299):
        c, g = cpu.with_input_size(size), gpu.with_input_size(size)
        for tf32 in (False, True):
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            worst, same_top1 = 0.0, True
            for img in images:
                lc = c.logits(c.preprocess(img))
                lg = g.logits(g.preprocess(img))
                worst = max(worst, ((lg - lc).abs().max() / lc.abs().max()).item())
                same_top1 &= bool(lc.argmax() == lg.argmax())
            budget = 1e-4 if not tf32 else None
            report(f"logits cuda vs cpu, {size}px, tf32={'on' if tf32 else 'off'} (rel)", worst,
                   (worst <= 1e-4 and same_top1) if not tf32 else same_top1, budget=budget)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

    img = images[0]
    report("predict on cuda", gpu.predict(img, k=2), True)
    x = gpu.preprocess(img)
    acts = xviz.activations(gpu, x, ["block1_conv1_act", "block5_sepconv1_depthwise", "block14_sepconv2_act"])
    report("activations back on cpu", {k: list(v.shape) for k, v in acts.items()},
           all(v.device.type == "cpu" for v in acts.values()) and no_hooks(gpu.net))

    heat_g = xviz.gradcam(gpu, x, None)
    heat_c = xviz.gradcam(cpu, cpu.preprocess(img), None)
    err = ((heat_g.cpu() - heat_c).abs().max() / heat_c.abs().max().clamp_min(1e-12)).item()
    report("gradcam cuda vs cpu (rel)", err, err <= 1e-3 and no_hooks(gpu.net))
    for method in ("guided_gradcam", "saliency", "integrated_gradients", "occlusion"):
        try:
            heat = attributions.attribute(gpu, x, None, method=method)
            report(f"{method} on cuda", list(heat.shape), bool(torch.isfinite(heat).all()) and no_hooks(gpu.net))
        except Exception as exc:  # report every method, not only the first failure
            report(f"{method} on cuda", repr(exc), False)

    cap = flows.capture_views(gpu, x)
    report("view capture on cuda", type(cap).__name__, no_hooks(gpu.net))

    g299 = gpu.with_input_size(299)
    naive = __import__("copy").deepcopy(g299.net).to(memory_format=torch.contiguous_format)
    xn = torch.randn(1, 3, 299, 299, device="cuda")
    xf = xn.contiguous(memory_format=xviz.device.memory_format(xn.device))
    with torch.no_grad():
        t_naive = cuda_seconds(lambda: naive(xn))
        t_fast = cuda_seconds(lambda: g299.net(xf))
        t_naive = min(t_naive, cuda_seconds(lambda: naive(xn)))
    report("forward 299px naive eager fp32 NCHW on cuda (ms)", t_naive * 1e3)
    report("forward 299px m.net on cuda (ms)", t_fast * 1e3)
    report("forward 299px m.net / naive on cuda", t_fast / t_naive, t_fast / t_naive <= 0.85, budget=0.85)
    with torch.no_grad():
        t_cap = cuda_seconds(lambda: flows.capture_views(g299, xf), repeat=10, warmup=2)
    report("view capture 299px / naive forward on cuda", t_cap / t_naive, t_cap / t_naive <= 1.0, budget=1.0)
    t_cam = cuda_seconds(lambda: xviz.gradcam(g299, xf, 0), repeat=20, warmup=3)
    report("gradcam block14_sepconv2_act / naive forward on cuda", t_cam / t_naive, t_cam / t_naive <= 1.3,
           budget=1.3)
    # issue 12: predictions (m.logits) no slower than the eager network on CUDA; fast mode (fp16)
    t_pred = cuda_seconds(lambda: g299.logits(xf))
    report("predictions 299px m.logits / m.net on cuda", t_pred / t_fast, t_pred / t_fast <= 1.05, budget=1.0,
           note="logits also copies 1 x classes to the host")
    fast = g299.with_fast_mode(True)
    t_fp16 = cuda_seconds(lambda: fast.logits(xf))
    report(f"fast mode ({fast.precision}) 299px / fp32 predictions on cuda", t_fp16 / t_pred)
    worst, same = 0.0, 0
    for img in images:
        p, q = (m.logits(m.preprocess(img)).softmax(-1) for m in (g299, fast))
        worst, same = max(worst, (p - q).abs().max().item()), same + int(p.argmax() == q.argmax())
    report("fast mode top-1 agreement with fp32 on cuda", same / len(images), same == len(images))
    report("fast mode largest probability difference on cuda", worst)
    print(json.dumps({"failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
