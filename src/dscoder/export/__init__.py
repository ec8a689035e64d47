"""Export: checkpoints in formats other runtimes load (GGUF for llama.cpp / Ollama)."""
