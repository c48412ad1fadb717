"""The peers bench_engine.py runs beside this engine, each as its users run it, on random weights
of the same shape: the seed notebook's cycle, audiocraft's `generate` for one stride,
transformers' MusicGen decoder and the fast-musicgen package."""
from __future__ import annotations

import time

from engine.models.random_musicgen import RANDOM_SHAPES
from stridetiming import PROMPT, WARMUP_FRAMES, StepClock, context_codes, timed

def run_seed(model, args) -> dict:
    import torch
    sr = model.sample_rate
    tail = model.compression_model.decode(context_codes(model, args))  # [1, C, context samples]
    model.set_generation_params(duration=args.context + WARMUP_FRAMES / model.frame_rate, top_k=250,
                                cfg_coef=3.0)
    model.generate_continuation(tail, sr, [PROMPT])
    model.set_generation_params(duration=args.context + args.stride, top_k=250, cfg_coef=3.0)
    clock = StepClock(args.device, args.steps)
    model.set_custom_progress_callback(clock)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    wall = timed(args.device, started, lambda: model.generate_continuation(tail, sr, [PROMPT], progress=True))
    return {**clock.figures(started), "stride_wall_s": wall, "dtype": audiocraft_precision(args)}


def audiocraft_precision(args) -> str:
    """What `MusicGen.generate` runs in: fp16 autocast on CUDA, fp32 on CPU."""
    return "fp16-autocast" if args.device == "cuda" else "fp32"


def run_extend(model, args) -> dict:
    import torch
    attributes, _ = model._prepare_tokens_and_attributes([PROMPT], None)
    context = context_codes(model, args)
    clock = StepClock(args.device, args.steps)

    def stride(frames: int, callback=None):
        with model.autocast:  # as MusicGen.generate runs the LM
            model.lm.generate(context, attributes, max_gen_len=context.shape[-1] + frames,
                              use_sampling=True, top_k=250, cfg_coef=3.0, callback=callback)
    stride(WARMUP_FRAMES)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    wall = timed(args.device, started, lambda: stride(round(args.stride * model.frame_rate), clock))
    return {**clock.figures(started), "stride_wall_s": wall, "dtype": audiocraft_precision(args)}


def run_transformers(args) -> dict:
    """transformers' decoder, driven the way its `generate` drives it (batch 2 for CFG, KV
    cache), without its generation wrapper."""
    import torch
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM
    shape = RANDOM_SHAPES[args.model]
    torch.manual_seed(args.seed)
    config = MusicgenDecoderConfig(is_decoder=True, add_cross_attention=True, hidden_size=shape.lm_dim,
                                   num_hidden_layers=shape.lm_layers, num_attention_heads=shape.lm_heads,
                                   ffn_dim=4 * shape.lm_dim, cross_attention_hidden_size=shape.lm_dim,
                                   dropout=0.0)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    with torch.device(args.device):
        model = MusicgenForCausalLM(config).eval().to(dtype)
    K, card = config.num_codebooks, config.vocab_size
    frames = round(args.context * 50) + K  # the context in the delay pattern
    ids = torch.randint(0, card, (2 * K, frames), device=args.device)
    text = torch.randn(2, 12, shape.lm_dim, device=args.device, dtype=dtype)
    clock = StepClock(args.device, args.steps)

    def stride(steps: int, callback=None):
        out = model(input_ids=ids, encoder_hidden_states=text, use_cache=True)
        for _ in range(steps):
            logits = out.logits[:, -1].view(2, K, card)
            guided = logits[1] + (logits[0] - logits[1]) * 3.0
            values, indices = guided.topk(250, dim=-1)
            pick = indices.gather(-1, torch.multinomial(torch.softmax(values.float(), -1), 1))  # [K, 1]
            if callback is not None:
                callback(0, steps)
            out = model(input_ids=pick.repeat(2, 1), encoder_hidden_states=text,
                        past_key_values=out.past_key_values, use_cache=True)
    stride(WARMUP_FRAMES)
    started = time.perf_counter()
    wall = timed(args.device, started, lambda: stride(round(args.stride * 50) + K - 1, clock))
    return {**clock.figures(started), "stride_wall_s": wall, "dtype": "fp16" if args.device == "cuda" else "fp32"}


def run_fast_musicgen(args) -> dict:
    """The fast-musicgen package (0.1.0: a static KV cache, and on CUDA one CUDA graph per text
    length, fp16), with random weights of the shape. It has no prefill and no audio prompt: its
    decoder takes one position per call, so the context is stepped through one position at a time
    (teacher-forced; timed as the prefill), as continuing a sequence with it goes, then the
    stride's frames are sampled with its own top-k sampler. fp32 eager on CPU."""
    import torch
    try:
        from fast_musicgen.lm import CausalLM, LMRunner
    except ImportError as err:
        raise SystemExit(f"fast-musicgen is not installed ({err}): pip install --no-deps fast-musicgen==0.1.0")
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config
    shape = RANDOM_SHAPES[args.model]
    cuda = args.device == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    config = MusicgenConfig(
        text_encoder=T5Config(d_model=shape.text_dim), audio_encoder=EncodecConfig(codebook_size=shape.card),
        decoder=MusicgenDecoderConfig(hidden_size=shape.lm_dim, num_hidden_layers=shape.lm_layers,
                                      num_attention_heads=shape.lm_heads, ffn_dim=4 * shape.lm_dim,
                                      num_codebooks=shape.n_q, vocab_size=shape.card, bos_token_id=shape.card))
    torch.set_default_device(args.device)  # as its LMRunner's constructor does (its sin embedding needs it)
    torch.manual_seed(args.seed)
    K, text_positions = shape.n_q, 12
    context_positions = round(args.context * 50) + K
    max_length = context_positions + round(args.stride * 50) + K + WARMUP_FRAMES
    with torch.device(args.device):
        model = CausalLM(config, device=args.device, dtype=dtype).eval().to(dtype)
        model.set_cache(max_length=max_length)
        text = torch.cat([torch.randn(1, text_positions, shape.lm_dim), torch.zeros(1, text_positions, shape.lm_dim)])
        text, context = text.to(dtype), torch.randint(0, shape.card, (context_positions, K))
    runner = object.__new__(LMRunner)  # (its constructor loads a checkpoint folder)
    runner.model, runner.cuda_graph, runner.prompt_max_len, runner.max_length = model, cuda, text_positions, max_length
    runner.graphs, runner.graph_vars = {}, {}
    if cuda:
        runner.warmup()
        runner.capture_cuda_graph()
        io = runner.graph_vars[text_positions]
    else:
        io = {"audio_x": torch.zeros(2, 1, K, dtype=torch.long), "text_x": text,
              "input_pos": torch.zeros(1, dtype=torch.long), "mask": torch.zeros(1, max_length, dtype=torch.bool)}

    def step(tokens: torch.Tensor, position: int) -> torch.Tensor:
        """tokens [K] at `position` → guided logits [1, 1, card, K], as its generate loop."""
        io["audio_x"].copy_(tokens.view(1, 1, K).expand(2, 1, K))
        io["text_x"].copy_(text)
        io["input_pos"].fill_(position)
        io["mask"].index_fill_(1, io["input_pos"], True)
        if cuda:
            runner.graphs[text_positions].replay()
            logits = io["output"]
        else:
            logits = model(io["audio_x"], io["text_x"], io["input_pos"], io["mask"])
        return logits[1:2] + (logits[:1] - logits[1:2]) * 3.0

    def stride(frames: int, callback=None):
        io["mask"].zero_()
        for position in range(context_positions):
            logits = step(context[position], position)
        for position in range(context_positions, context_positions + frames):
            tokens = model.top_k_sampling(logits=logits, top_k=250, temperature=1.0, dim=-2).view(K)
            if callback is not None:
                callback(0, frames)
            logits = step(tokens, position)
    with torch.inference_mode():
        stride(WARMUP_FRAMES)
        clock = StepClock(args.device, args.steps)
        started = time.perf_counter()
        wall = timed(args.device, started, lambda: stride(round(args.stride * 50) + K - 1, clock))
    return {**clock.figures(started), "stride_wall_s": wall, "dtype": "fp16" if cuda else "fp32"}
