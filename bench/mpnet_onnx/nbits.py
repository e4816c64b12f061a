"""Trial: blockwise 8-bit weights (ONNX Runtime's MatMulNBits) for the fp32 graph that build.py makes.

Plain dynamic int8 (build.py's second file) is fast but wrong for this model: a few activation
channels reach 50-100 against a median of ~2, so one scale per tensor loses them (cosine to fp32
0.68). Weights quantized per block of 128 with activations quantized per block keep it (cosine
0.997 minimum; WixQA mpnet + BM25 recall@5 0.950, MRR 0.911) at ~25 ms per query on one thread.

    python nbits.py /tmp/mpnet_onnx/mpnet.onnx 8 128 4 /tmp/mpnet_onnx/nb8_b128_a4.onnx

Needs ``onnx``, ``onnx-ir`` and ``onnxruntime`` (a scratch venv: not the project's dependencies).
"""

import sys

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

source, bits, block, accuracy, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
quantizer = MatMulNBitsQuantizer(onnx.load(source), bits=bits, block_size=block, is_symmetric=True,
                                 accuracy_level=accuracy, op_types_to_quantize=("MatMul",))
quantizer.process()
quantizer.model.save_model_to_file(out, use_external_data_format=False)
print("saved", out)
