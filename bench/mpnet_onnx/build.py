"""Trial: an ONNX (opset 17) graph of all-mpnet-base-v2 built from model.safetensors, no torch.

inputs input_ids, attention_mask int64 [batch, seq] -> sentence_embedding float32 [batch, 768]
(mean-pooled over the mask, L2-normalised). Then a dynamic int8 copy, which is NOT usable for
this model (see nbits.py). The fp32 graph matches bench/mpnet_trial.py's numpy forward pass
(cosine >= 0.9999996 over questions and passages, single and padded batches) at ~45 ms per query.

    python build.py /tmp/mpnet/model/all-mpnet-base-v2   # writes /tmp/mpnet_onnx/mpnet.onnx

Needs ``onnx`` and ``onnxruntime`` (a scratch venv: not the project's dependencies).
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

MODEL_DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mpnet/model/all-mpnet-base-v2")
OUT = Path("/tmp/mpnet_onnx")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script, from a scratch venv
from weights import load_safetensors, relative_position_bucket  # noqa: E402


def build():
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    w = load_safetensors(MODEL_DIR / "model.safetensors")
    D, H, L, eps, pad = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"], cfg["layer_norm_eps"], cfg["pad_token_id"]
    dh = D // H
    maxpos = cfg["max_position_embeddings"] - pad - 1  # 512 usable positions
    nodes, inits = [], []
    cnt = [0]

    def init(name, arr):
        inits.append(nh.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, ins, n_out=1, **attrs):
        cnt[0] += 1
        outs = [f"{op}_{cnt[0]}" + (f"_{i}" if n_out > 1 else "") for i in range(n_out)]
        nodes.append(oh.make_node(op, ins, outs, name=f"{op}_{cnt[0]}", **attrs))
        return outs[0] if n_out == 1 else outs

    def i64(name, v):
        return init(name, np.array(v, dtype=np.int64))

    def f32(name, v):
        return init(name, np.array(v, dtype=np.float32))

    # constants
    c_pad = i64("c_pad", pad)
    i64("c_one_i", 1)
    i64("c_zero_i", 0)
    c_axis1 = i64("c_axis1", 1)
    c_ax1 = i64("c_ax1", [1])
    c_ax0 = i64("c_ax0", [0])
    c_ax_m1 = i64("c_ax_m1", [-1])
    c_ax12 = i64("c_ax12", [1, 2])
    c_00 = i64("c_00", [0, 0])
    c_01 = i64("c_01", [0, 1])
    c_one_f = f32("c_one_f", 1.0)
    c_half = f32("c_half", 0.5)
    c_isqrt2 = f32("c_isqrt2", 1 / math.sqrt(2))
    c_neg = f32("c_neg", -1e9)
    c_tiny = f32("c_tiny", 1e-9)
    c_heads_shape = i64("c_qkv_shape", [0, 0, 3 * H, dh])
    c_ctx_shape = i64("c_ctx_shape", [0, 0, D])

    # embeddings
    word = init("word_embeddings", w["embeddings.word_embeddings.weight"])
    posemb = init("position_embeddings", w["embeddings.position_embeddings.weight"])
    e = node("Gather", [word, "input_ids"], axis=0)
    pos_ids = node("Add", [node("Mul", [node("CumSum", ["attention_mask", c_axis1]), "attention_mask"]), c_pad])
    e = node("Add", [e, node("Gather", [posemb, pos_ids], axis=0)])
    x = node("LayerNormalization", [e, init("emb_ln_w", w["embeddings.LayerNorm.weight"]),
                                    init("emb_ln_b", w["embeddings.LayerNorm.bias"])], axis=-1, epsilon=eps)

    # relative position bias [1, H, T, T] + mask bias [B, 1, 1, T]
    pos = np.arange(maxpos)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], cfg["relative_attention_num_buckets"])
    assert buckets.min() >= 0 and buckets.max() < cfg["relative_attention_num_buckets"]
    bucket_tab = init("rel_buckets", buckets.astype(np.int64))
    T = node("Shape", ["input_ids"], start=1, end=2)  # [T]
    TT = node("Concat", [T, T], axis=0)
    sl = node("Slice", [bucket_tab, c_00, TT, c_01])  # [T, T]
    rel = node("Gather", [init("rel_bias_table", w["encoder.relative_attention_bias.weight"]), sl], axis=0)  # [T,T,H]
    rel = node("Unsqueeze", [node("Transpose", [rel], perm=[2, 0, 1]), c_ax0])  # [1,H,T,T]
    maskf = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)  # [B,T]
    madd = node("Mul", [node("Sub", [c_one_f, maskf]), c_neg])
    madd = node("Unsqueeze", [madd, c_ax12])  # [B,1,1,T]
    bias = node("Add", [rel, madd])  # [B,H,T,T]

    scale = np.float32(1 / math.sqrt(dh))  # 1/8, exact power of two: folded into the q weights
    for i in range(L):
        p = f"encoder.layer.{i}."
        def g(n, p=p):
            return w[p + n]
        qkv_w = np.concatenate([g("attention.attn.q.weight") * scale, g("attention.attn.k.weight"),
                                g("attention.attn.v.weight")], 0).T.astype(np.float32)
        qkv_b = np.concatenate([g("attention.attn.q.bias") * scale, g("attention.attn.k.bias"),
                                g("attention.attn.v.bias")]).astype(np.float32)
        qkv = node("Add", [node("MatMul", [x, init(f"l{i}_qkv_w", qkv_w)]), init(f"l{i}_qkv_b", qkv_b)])
        qkv = node("Transpose", [node("Reshape", [qkv, c_heads_shape])], perm=[0, 2, 1, 3])  # [B,3H,T,dh]
        q, k, v = node("Split", [qkv, i64(f"l{i}_split", [H, H, H])], n_out=3, axis=1)
        s = node("Add", [node("MatMul", [q, node("Transpose", [k], perm=[0, 1, 3, 2])]), bias])
        pr = node("Softmax", [s], axis=-1)
        c = node("Reshape", [node("Transpose", [node("MatMul", [pr, v])], perm=[0, 2, 1, 3]), c_ctx_shape])
        a = node("Add", [node("MatMul", [c, init(f"l{i}_o_w", g("attention.attn.o.weight").T)]),
                         init(f"l{i}_o_b", g("attention.attn.o.bias"))])
        a = node("LayerNormalization", [node("Add", [a, x]), init(f"l{i}_ln1_w", g("attention.LayerNorm.weight")),
                                        init(f"l{i}_ln1_b", g("attention.LayerNorm.bias"))], axis=-1, epsilon=eps)
        h = node("Add", [node("MatMul", [a, init(f"l{i}_i_w", g("intermediate.dense.weight").T)]),
                         init(f"l{i}_i_b", g("intermediate.dense.bias"))])
        # exact GELU: 0.5 * h * (1 + erf(h / sqrt 2)) (ORT fuses this into Gelu)
        h = node("Mul", [node("Mul", [h, node("Add", [node("Erf", [node("Mul", [h, c_isqrt2])]), c_one_f])]), c_half])
        o = node("Add", [node("MatMul", [h, init(f"l{i}_f_w", g("output.dense.weight").T)]),
                         init(f"l{i}_f_b", g("output.dense.bias"))])
        x = node("LayerNormalization", [node("Add", [o, a]), init(f"l{i}_ln2_w", g("output.LayerNorm.weight")),
                                        init(f"l{i}_ln2_b", g("output.LayerNorm.bias"))], axis=-1, epsilon=eps)

    m3 = node("Unsqueeze", [maskf, c_ax_m1])  # [B,T,1]
    summed = node("ReduceSum", [node("Mul", [x, m3]), c_ax1], keepdims=0)  # [B,D]
    cnt_ = node("Max", [node("ReduceSum", [m3, c_ax1], keepdims=0), c_tiny])  # [B,1]
    pooled = node("Div", [summed, cnt_])
    nodes.append(oh.make_node("LpNormalization", [pooled], ["sentence_embedding"], axis=-1, p=2, name="l2norm"))

    graph = oh.make_graph(
        nodes, "all-mpnet-base-v2",
        [oh.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         oh.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [oh.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", D])],
        inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], producer_name="mpnet_onnx/build.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(OUT / "mpnet.onnx"))
    print("saved", OUT / "mpnet.onnx", (OUT / "mpnet.onnx").stat().st_size / 1e6, "MB;", len(nodes), "nodes")


def quantize():
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(OUT / "mpnet.onnx"), str(OUT / "mpnet_int8.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    print("saved", OUT / "mpnet_int8.onnx", (OUT / "mpnet_int8.onnx").stat().st_size / 1e6, "MB")


if __name__ == "__main__":
    build()
    quantize()
