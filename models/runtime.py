"""Fast CPU inference for the engine's transformers: ONNX Runtime and OpenVINO, fp32 or int8.

A *runtime* names how a model's forward pass runs:

=======================  ==================================================================
``torch``                PyTorch fp32, through sentence-transformers (the reference)
``onnx``                 ONNX Runtime fp32, all graph optimisations (fused attention, GELU)
``onnx-int8``            ONNX Runtime, weights quantised to int8 *dynamically* (no data)
``onnx-int8-static``     ONNX Runtime, weights and activations int8, activation ranges
                         *calibrated* on the engine's own (query, product) pairs
``openvino``             OpenVINO fp32 (OpenVINO would pick bf16 on CPUs with AVX512-BF16
                         or AMX; ``openvino`` asks for f32 so that it matches torch)
``openvino-bf16``        OpenVINO, fp32 weights run in bfloat16 where the CPU has it
``openvino-int8-static`` OpenVINO, int8 by NNCF post-training quantisation calibrated on
                         the engine's own pairs
=======================  ==================================================================

Why not ``SentenceTransformer(..., backend="onnx")``: that path goes through Hugging Face
Optimum, whose current releases pin ``transformers<4.58`` (optimum-onnx 0.1) or pull a CUDA
build of torch 2.14 (optimum-intel 2.2), either of which would replace this project's stack.
So the export is ``torch.onnx.export`` of the same Hugging Face module sentence-transformers
runs, and quantisation is ONNX Runtime's own (``onnxruntime.quantization``) or NNCF's,
which is what Optimum calls underneath. Tokenisation, pooling and normalisation stay the
libraries' (the model folder's tokenizer; the sentence-transformers pooling mode), so only the
forward pass changes, and ``tests/models/test_runtime.py`` checks each runtime against torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from shopsearch.errors import ModelError

logger = logging.getLogger(__name__)

RUNTIMES = (
    "torch",
    "onnx",
    "onnx-int8",
    "onnx-int8-static",
    "openvino",
    "openvino-bf16",
    "openvino-int8-static",
)
#: Query and product vectors must come from one function: a runtime that changes the vectors
#: (int8) would compare int8 queries with fp32 products, so encoders use fp32 runtimes only.
ENCODER_RUNTIMES = ("torch", "onnx", "openvino", "openvino-bf16")
#: What a reranker folder exported by :func:`export_reranker` records about its runtime.
RUNTIME_FILE = "runtime.json"

Kind = Literal["encoder", "cross-encoder"]
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    backend: Literal["torch", "onnx", "openvino"]
    quantization: Literal["none", "dynamic", "static"]

    @property
    def needs_calibration(self) -> bool:
        return self.quantization == "static"

    @property
    def file_name(self) -> str:
        return "model.onnx" if self.backend == "onnx" else "model.xml"


def runtime_spec(name: str) -> RuntimeSpec:
    """The spec of a runtime name, or a ``ModelError`` listing the names there are."""
    if name not in RUNTIMES:
        raise ModelError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    backend = name.split("-")[0]
    quantization = "static" if name.endswith("static") else "dynamic" if "int8" in name else "none"
    return RuntimeSpec(name, backend, quantization)  # type: ignore[arg-type]


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(
            f"the {extra} runtime needs the {module} package: pip install {extra}"
        ) from None


# ----------------------------------------------------------------------------- export


def _hf_module(model_dir: Path, kind: Kind) -> Any:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    loader = AutoModelForSequenceClassification if kind == "cross-encoder" else AutoModel
    # Eager attention exports to plain MatMul/Softmax nodes, which ONNX Runtime fuses into
    # its own attention kernel and which the quantisers know how to treat.
    model = loader.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    output = "logits" if kind == "cross-encoder" else "last_hidden_state"

    class Forward(torch.nn.Module):
        """Keyword inputs and one output: what ``torch.onnx.export`` can trace."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return getattr(self.model(**dict(zip(names, inputs))), output)

    names = _input_names(model_dir)
    return Forward(), names, output


def _input_names(model_dir: Path) -> list[str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    wanted = ("input_ids", "attention_mask", "token_type_ids")
    return [n for n in wanted if n in tokenizer.model_input_names]


def export_onnx(model_dir: str | Path, out_file: str | Path, kind: Kind) -> Path:
    """Export a Hugging Face model folder's forward pass to ONNX (fp32, dynamic batch and
    sequence axes): ``last_hidden_state`` for an encoder, ``logits`` for a cross-encoder."""
    import torch
    from transformers import AutoTokenizer

    model_dir, out_file = Path(model_dir), Path(out_file)
    module, names, output = _hf_module(model_dir, kind)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    example = tokenizer(
        ["warm up", "a second, longer example"],
        ["a product", "another product title"] if kind == "cross-encoder" else None,
        padding=True,
        return_tensors="pt",
    )
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if kind == "cross-encoder" else {0: "batch", 1: "sequence"}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(
            module,
            tuple(example[n] for n in names),
            str(out_file),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return out_file


def _onnx_feeds_reader(feeds: Sequence[Feeds]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(feeds)

        def get_next(self) -> Feeds | None:
            return next(self._items, None)

    return Reader()


def quantize_onnx(src: Path, dst: Path, calibration: Sequence[Feeds] | None) -> Path:
    """int8 ONNX: dynamic (weights only, activations quantised per call) without
    ``calibration``; static QDQ (weights per channel, activation ranges from the calibration
    feeds) with it."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name(dst.stem + ".prepared.onnx")
    # Symbolic shape inference cannot follow the dynamic attention mask; ONNX shape inference
    # and the graph optimisation it runs are what quantisation needs.
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    try:
        if calibration is None:
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        else:
            quantize_static(
                str(prepared),
                str(dst),
                _onnx_feeds_reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                # Softmax and layer norm outputs keep their float ranges: quantising them is
                # where int8 transformers lose most of their accuracy.
                op_types_to_quantize=["MatMul", "Gemm"],
                # Only weight MatMuls: int8 attention scores (Q K^T, softmax V) cost most of
                # the accuracy int8 loses, for little of the time it saves.
                extra_options={
                    "ActivationSymmetric": False,
                    "WeightSymmetric": True,
                    "MatMulConstBOnly": True,
                },
            )
    finally:
        prepared.unlink(missing_ok=True)
    return dst


def convert_openvino(src: Path, dst_xml: Path, calibration: Sequence[Feeds] | None) -> Path:
    """An OpenVINO IR (``.xml`` + ``.bin``) of an fp32 ONNX file; int8 by NNCF post-training
    quantisation (transformer preset) on the calibration feeds when given."""
    ov = _require("openvino", "openvino")
    model = ov.convert_model(str(src))
    if calibration is not None:
        nncf = _require("nncf", "nncf")
        model = nncf.quantize(
            model,
            nncf.Dataset(list(calibration)),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
        )
    ov.save_model(model, str(dst_xml), compress_to_fp16=False)
    return dst_xml


def export_model(
    model_dir: str | Path,
    runtime: str,
    out_dir: str | Path,
    kind: Kind,
    calibration: Sequence[Feeds] | None = None,
) -> Path:
    """Write ``out_dir/<model.onnx | model.xml>`` for ``runtime``; the file's path.

    Static runtimes need ``calibration`` (feeds of real inputs); the others refuse it, so a
    caller cannot think it calibrated a dynamic model."""
    spec = runtime_spec(runtime)
    if spec.backend == "torch":
        raise ModelError("the torch runtime runs the model folder itself; nothing to export")
    if spec.needs_calibration and not calibration:
        raise ModelError(f"runtime {runtime} needs calibration inputs (the engine's own pairs)")
    if not spec.needs_calibration and calibration is not None:
        raise ModelError(f"runtime {runtime} is not calibrated; pass no calibration inputs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shopsearch-export-") as tmp:
        fp32 = export_onnx(model_dir, Path(tmp) / "fp32.onnx", kind)
        target = out_dir / spec.file_name
        if spec.backend == "onnx" and spec.quantization == "none":
            shutil.copyfile(fp32, target)
        elif spec.backend == "onnx":
            quantize_onnx(fp32, target, calibration)
        else:
            convert_openvino(fp32, target, calibration)
    return target


# ----------------------------------------------------------------------------- running


class CompiledModel:
    """One exported model file ready to run: ``model(feeds) -> first output`` (float32).

    ``threads`` is the intra-op thread count (default: torch's current setting, so that one
    ``--threads`` governs every runtime); serving uses one per worker. ``precision`` is
    OpenVINO's inference precision for float operations (``f32`` or ``bf16``)."""

    def __init__(
        self, path: str | Path, threads: int | None = None, precision: str = "f32"
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"exported model {path} does not exist")
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        self.path = path
        self.threads = threads
        if path.suffix == ".onnx":
            ort = _require("onnxruntime", "onnxruntime")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
            self.input_names = [i.name for i in self._session.get_inputs()]
            self._run = lambda feeds: self._session.run(None, feeds)[0]
        elif path.suffix == ".xml":
            ov = _require("openvino", "openvino")
            compiled = ov.Core().compile_model(
                str(path),
                "CPU",
                {
                    "INFERENCE_NUM_THREADS": threads,
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": precision,
                },
            )
            request = compiled.create_infer_request()
            self.input_names = [i.get_any_name() for i in compiled.inputs]
            self._run = lambda feeds: request.infer(feeds)[compiled.outputs[0]]
        else:
            raise ModelError(f"{path}: not an .onnx or OpenVINO .xml model")

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        wanted = {
            name: np.ascontiguousarray(feeds[name], dtype=np.int64) for name in self.input_names
        }
        return np.asarray(self._run(wanted), dtype=np.float32)


def tokenizer_feeds(encoded: Mapping[str, Any], names: Iterable[str]) -> Feeds:
    """A tokenizer's numpy output restricted to a model's inputs, as int64."""
    return {n: np.asarray(encoded[n], dtype=np.int64) for n in names}


def compile_runtime(path: str | Path, runtime: str) -> CompiledModel:
    """``CompiledModel`` of an exported file with the precision its runtime name asks for."""
    return CompiledModel(path, precision="bf16" if runtime.endswith("bf16") else "f32")


def read_runtime(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``runtime.json`` of an exported reranker folder, or None for a plain (torch) one."""
    path = Path(model_dir) / RUNTIME_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("runtime") not in RUNTIMES:
        raise ModelError(f"{path}: field 'runtime' must be one of {', '.join(RUNTIMES)}")
    if not (Path(model_dir) / str(record.get("file", ""))).is_file():
        raise ModelError(f"{path}: field 'file' names {record.get('file')!r}, which is missing")
    return record


def default_threads() -> int:
    """Threads a fresh process would give torch: ``$OMP_NUM_THREADS`` or the core count."""
    value = os.environ.get("OMP_NUM_THREADS")
    return int(value) if value and value.isdigit() else os.cpu_count() or 1
