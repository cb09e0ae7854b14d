#!/usr/bin/env bash
# Creates .venv-http with the official `ollama` and `openai` Python clients
# (for tests/http/clients.py); prints the python to use.
exec "$(dirname "${BASH_SOURCE[0]}")/../venv.sh" http 'import ollama, openai'
