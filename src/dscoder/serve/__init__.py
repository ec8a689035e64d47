"""HTTP serving: the OpenAI-compatible and llama.cpp-compatible API over the continuous-batching scheduler."""
