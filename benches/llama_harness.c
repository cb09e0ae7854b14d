// A minimal llama.cpp prefill/decode harness over the same static library
// blipd links (the vendored llama.cpp has no llama-bench sources). It loads a
// GGUF once, then per round: clears the KV cache, decodes N_PREFILL prompt
// tokens in one batch, then N_DECODE tokens one at a time (greedy argmax),
// and prints one JSON line. With --lockstep it waits for a line on stdin
// before each round, so a driver (models/compare.py) can alternate it with
// `blipd bench --lockstep` round by round.
//
//   llama_harness MODEL N_PREFILL N_DECODE THREADS N_CTX ROUNDS [--lockstep] [--no-repack] [--no-mmap]
//
// Context settings mirror src/llm/ffi.rs (n_batch = n_ctx, n_ubatch <= 512).
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s MODEL N_PREFILL N_DECODE THREADS N_CTX ROUNDS [--lockstep] [--no-repack] [--no-mmap]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int n_prefill = atoi(argv[2]), n_decode = atoi(argv[3]), threads = atoi(argv[4]);
    int n_ctx = atoi(argv[5]), rounds = atoi(argv[6]);
    int lockstep = 0, repack = 1, mmap = 1;
    for (int i = 7; i < argc; i++) {
        if (!strcmp(argv[i], "--lockstep")) lockstep = 1;
        else if (!strcmp(argv[i], "--no-repack")) repack = 0;
        else if (!strcmp(argv[i], "--no-mmap")) mmap = 0;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = repack;
    mp.load_mode = mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
    double t0 = now_ms();
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", path); return 1; }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_ctx;
    cp.n_ubatch = n_ctx < 512 ? n_ctx : 512;
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.no_perf = 1;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a context of %d\n", n_ctx); return 1; }
    fprintf(stderr, "{\"load_ms\": %.1f}\n", now_ms() - t0);
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    llama_token *prompt = malloc(sizeof(llama_token) * (size_t)n_prefill);
    for (int i = 0; i < n_prefill; i++) prompt[i] = 3 + (llama_token)((i * 7919L) % (n_vocab - 3));

    char line[64];
    for (int r = 0; r < rounds; r++) {
        if (lockstep && !fgets(line, sizeof line, stdin)) break;
        llama_memory_clear(llama_get_memory(ctx), 1);
        double a = now_ms();
        if (llama_decode(ctx, llama_batch_get_one(prompt, n_prefill))) { fprintf(stderr, "prefill failed\n"); return 1; }
        double b = now_ms();
        for (int i = 0; i < n_decode; i++) {
            const float *logits = llama_get_logits_ith(ctx, -1);
            llama_token best = 0;
            for (int v = 1; v < n_vocab; v++) if (logits[v] > logits[best]) best = v;
            if (llama_decode(ctx, llama_batch_get_one(&best, 1))) { fprintf(stderr, "decode failed\n"); return 1; }
        }
        double c = now_ms();
        printf("{\"prefill_ms\": %.3f, \"prefill_tokens_per_s\": %.3f, \"decode_tokens_per_s\": %.3f}\n",
               b - a, n_prefill / ((b - a) / 1e3), n_decode / ((c - b) / 1e3));
        fflush(stdout);
    }
    free(prompt);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
