import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.lm.window import SamplingParams, WindowGenerator
from engine.codec.activations import NativeELU, use_native_elu
from engine.codec.stitcher import StitchingDecoder
from engine.lm.kernels import load_cpu_kernels
from nativeutil import needs_native

FRAME_RATE = 50
SEAM_HALF_WIDTH_SECONDS = 0.2
#: The bar the README states: the stitched stream equals a one-shot decode to ≥ 120 dB, over the
#: whole stream and within ±0.2 s of every seam (float32 rounding, not a seam, is what is left).
SEAM_SNR_DB = 120.0


def snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    noise = np.sum((estimate.astype(np.float64) - reference) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(noise, 1e-30)))


@pytest.fixture(scope="module")
def strides(tiny_model):
    """Four real strides of the tiny model (3 s each, 4 s of token context)."""
    gen = WindowGenerator(tiny_model, context_frames=4 * FRAME_RATE, sampling=SamplingParams(), seed=5)
    return [gen.next_stride("ambient drone", 3 * FRAME_RATE) for _ in range(4)]


def one_shot(compression_model, codes):
    with torch.no_grad():
        return compression_model.decode(codes)[0].T.numpy()  # [samples, channels]


def test_stitched_stream_equals_one_shot_decode_at_every_seam(tiny_model, strides):
    cm = tiny_model.compression_model
    stitcher = StitchingDecoder(cm)
    assert stitcher._post.tiled  # on CPU the last upsampling stage runs over time tiles (tiling.py)
    pieces = [stitcher.push(codes) for codes in strides] + [stitcher.flush()]
    stitched = np.concatenate(pieces)
    reference = one_shot(cm, torch.cat(strides, dim=-1))
    assert stitched.shape == reference.shape
    assert snr_db(stitched, reference) >= SEAM_SNR_DB
    hop = stitcher.hop_samples
    w = int(SEAM_HALF_WIDTH_SECONDS * tiny_model.sample_rate)
    seams = np.cumsum([c.shape[-1] for c in strides])[:-1] * hop
    for seam in seams:
        near = slice(seam - w, seam + w)
        assert snr_db(stitched[near], reference[near]) >= SEAM_SNR_DB, f"seam at sample {seam}"
    # The bar means something: decoding each stride alone clicks at the seams.
    naive = np.concatenate([one_shot(cm, codes) for codes in strides])
    worst_naive = min(snr_db(naive[s - w:s + w], reference[s - w:s + w]) for s in seams)
    assert worst_naive < 30.0


@pytest.mark.parametrize("chunk_frames", [7, 64])
def test_the_stack_after_the_lstm_decoded_in_chunks_is_the_same_stream(tiny_model, strides, monkeypatch,
                                                                       chunk_frames):
    """The convolutions after the LSTM run over at most POST_CHUNK_FRAMES frames at a time, each
    chunk with its receptive field's context: chunk seams are as inaudible as stride seams."""
    import engine.codec.stitcher as stitcher_module
    monkeypatch.setattr(stitcher_module, "POST_CHUNK_FRAMES", chunk_frames)
    cm = tiny_model.compression_model
    stitcher = StitchingDecoder(cm)
    stitched = np.concatenate([stitcher.push(codes) for codes in strides] + [stitcher.flush()])
    reference = one_shot(cm, torch.cat(strides, dim=-1))
    assert stitched.shape == reference.shape
    assert snr_db(stitched, reference) >= SEAM_SNR_DB
    hop, w = stitcher.hop_samples, int(SEAM_HALF_WIDTH_SECONDS * tiny_model.sample_rate)
    for frame in range(chunk_frames, sum(c.shape[-1] for c in strides) - 20, chunk_frames * 5):
        near = slice(max(0, frame * hop - w), frame * hop + w)
        assert snr_db(stitched[near], reference[near]) >= SEAM_SNR_DB, f"near frame {frame}"


def test_reset_starts_a_fresh_stream(tiny_model, strides):
    """The producer warms the codec up with a throwaway stride, then resets the stitcher."""
    fresh = StitchingDecoder(tiny_model.compression_model)
    expected = np.concatenate([fresh.push(codes) for codes in strides[:2]])
    reused = StitchingDecoder(tiny_model.compression_model)
    reused.push(strides[3])
    reused.reset()
    got = np.concatenate([reused.push(codes) for codes in strides[:2]])
    assert np.array_equal(got, expected)


def test_holds_back_only_the_lookahead_until_the_next_stride(tiny_model, strides):
    stitcher = StitchingDecoder(tiny_model.compression_model)
    first = stitcher.push(strides[0])
    hop = stitcher.hop_samples
    assert 0 < stitcher.holdback_frames <= 10  # at most 200 ms at 50 Hz
    assert first.shape[0] == (strides[0].shape[-1] - stitcher.holdback_frames) * hop
    rest = stitcher.flush()
    assert rest.shape[0] == stitcher.holdback_frames * hop


def test_push_size_does_not_change_the_audio(tiny_model, strides):
    codes = torch.cat(strides[:2], dim=-1)
    whole = StitchingDecoder(tiny_model.compression_model)
    expected = np.concatenate([whole.push(codes), whole.flush()])
    pieces = StitchingDecoder(tiny_model.compression_model)
    sizes = [1, 2, 7, 3, 50, 1, 64]
    out, at, i = [], 0, 0
    while at < codes.shape[-1]:
        n = sizes[i % len(sizes)]
        out.append(pieces.push(codes[..., at:at + n]))
        at, i = at + n, i + 1
    out.append(pieces.flush())
    got = np.concatenate(out)
    assert got.shape == expected.shape
    assert snr_db(got, expected) >= SEAM_SNR_DB


def test_memory_stays_bounded(tiny_model):
    stitcher = StitchingDecoder(tiny_model.compression_model)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        stitcher.push(torch.randint(0, 2048, (1, 4, 100), generator=g))
    keep = stitcher.pre_left_frames + stitcher.post_left_frames + stitcher.holdback_frames
    assert stitcher._codes.shape[-1] <= keep
    assert stitcher._feats.shape[-1] <= keep


def test_stereo_models_decode_seam_free(tiny_model):
    from audiocraft.models.encodec import InterleaveStereoCompressionModel
    stereo = InterleaveStereoCompressionModel(tiny_model.compression_model, per_timestep=False)
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 2048, (1, 8, 300), generator=g)
    stitcher = StitchingDecoder(stereo)
    out = np.concatenate([stitcher.push(codes[..., :120]), stitcher.push(codes[..., 120:]),
                          stitcher.flush()])
    reference = one_shot(stereo, codes)
    assert out.shape == reference.shape and out.shape[1] == 2
    assert snr_db(out, reference) >= SEAM_SNR_DB
    assert not np.allclose(out[:, 0], out[:, 1])  # left and right are different channels




@needs_native
def test_native_elu_agrees_with_torchs_to_a_float_ulp():
    kernels = load_cpu_kernels()
    x = torch.cat([torch.randn(100_003) * 4, torch.linspace(-120, 3, 50_001),
                   torch.tensor([0.0, -0.0, -1e-30, -1e-7, -0.3466, -0.6931, -0.69315, -88.5, 1e30,
                                 float("inf"), float("-inf")])])
    exact = F.elu(x.double())
    got = kernels.elu(x)
    assert got.shape == x.shape and got.dtype == torch.float32
    finite = exact.isfinite()
    assert torch.equal(got[~finite].double(), exact[~finite])
    assert ((got[finite].double() - exact[finite]).abs() <= 1.2e-7 * exact[finite].abs()).all()
    assert torch.isnan(kernels.elu(torch.tensor([float("nan")]))).all()
    strided = torch.randn(3, 40).T  # not contiguous
    assert torch.allclose(kernels.elu(strided), F.elu(strided), rtol=1.2e-7, atol=0)


@needs_native
def test_native_elu_decodes_what_torchs_elu_decodes_seam_free(tiny_model, strides):
    """The codec's ELU on the native kernel (what codecs of real size get on CPU:
    codec/activations.py): the same audio as torch's ELU, and still seam-exact."""
    from engine.models.load import load_model
    cm = load_model("tiny", seed=0).compression_model  # the fixture's weights, a codec of its own
    assert use_native_elu(cm) == 0  # the tiny codec is too small for it to pay: left as it is
    swapped = use_native_elu(cm, min_parameters=0)
    assert swapped > 0 and sum(isinstance(m, NativeELU) for m in cm.decoder.modules()) == swapped
    codes = torch.cat(strides, dim=-1)
    native = one_shot(cm, codes)
    assert snr_db(native, one_shot(tiny_model.compression_model, codes)) >= SEAM_SNR_DB
    stitcher = StitchingDecoder(cm)
    stitched = np.concatenate([stitcher.push(c) for c in strides] + [stitcher.flush()])
    assert snr_db(stitched, native) >= SEAM_SNR_DB


@pytest.mark.parametrize("stride", [2, 4, 5, 8])
def test_polyphase_upsampling_is_the_transposed_convolution(stride):
    """engine/codec/upsampling.py: a transposed convolution of kernel 2·stride as one plain
    convolution of its phases gives the same samples (to float rounding), padding trimmed by
    audiocraft's wrapper as before; folded weight norms give the same weights."""
    from audiocraft.modules.conv import StreamableConvTranspose1d

    from engine.codec.upsampling import PolyphaseConvTranspose1d, speed_up_upsampling
    torch.manual_seed(stride)
    wrapped = StreamableConvTranspose1d(24, 16, 2 * stride, stride=stride, norm="weight_norm")
    x = torch.randn(2, 24, 37)
    with torch.inference_mode():
        expected = wrapped(x)
    codec = torch.nn.Module()
    codec.decoder = torch.nn.Sequential(wrapped)
    assert speed_up_upsampling(codec) == 1
    assert isinstance(wrapped.convtr.convtr, PolyphaseConvTranspose1d)
    with torch.inference_mode():
        got = wrapped(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not PolyphaseConvTranspose1d.fits(torch.nn.ConvTranspose1d(4, 4, 3, stride=2))  # kernel ≠ 2·stride: kept


def _codec_like_stack(channels: int) -> torch.nn.Sequential:
    """audiocraft's non-causal layers as EnCodec's last stage stacks them: conv → ELU → ×4
    transposed conv (as the polyphase convolution) → ELU → conv → ELU → final conv, zero padded."""
    from audiocraft.modules.conv import StreamableConv1d, StreamableConvTranspose1d

    from engine.codec.upsampling import PolyphaseConvTranspose1d
    torch.manual_seed(3)
    upsample = StreamableConvTranspose1d(channels, 6, 8, stride=4)
    upsample.convtr.convtr = PolyphaseConvTranspose1d(upsample.convtr.convtr)
    return torch.nn.Sequential(
        StreamableConv1d(channels, channels, 3, pad_mode="constant"), torch.nn.ELU(), upsample, torch.nn.ELU(),
        StreamableConv1d(6, 6, 3, pad_mode="constant"), torch.nn.ELU(), StreamableConv1d(6, 1, 7, pad_mode="constant"))


@pytest.mark.parametrize("frames", [1, 37, 200])
def test_the_last_upsampling_stage_over_time_tiles_gives_the_plain_stacks_samples(frames):
    """engine/codec/tiling.py: the stack from its last rate-raising layer runs over tiles, each with
    its measured receptive field's context: the same samples as the plain stack, the ends included."""
    from engine.codec.tiling import TimeTiledStack
    plain = _codec_like_stack(8)
    tiled = TimeTiledStack(list(plain), 8, "cpu", tile_output_samples=64)
    assert tiled.tiled and tiled.scale == 4 and tiled.tile_frames == 16
    assert isinstance(tiled.tail[0], type(plain[2]))  # split at the upsampling, not before
    calls = []
    tiled.tail.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[-1]))
    x = torch.randn(2, 8, frames)
    with torch.inference_mode():
        expected, got = plain(x), tiled(x)
    assert got.shape == expected.shape == (2, 1, 4 * frames)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert len(calls) == max(1, -(-frames // 16))  # one tail call per tile
    assert max(calls) <= 16 + tiled.left_frames + tiled.right_frames


def test_a_stack_that_never_raises_the_rate_runs_plainly():
    from engine.codec.tiling import TimeTiledStack
    torch.manual_seed(4)
    plain = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3, padding=1), torch.nn.ELU())
    stack = TimeTiledStack(list(plain), 4, "cpu", tile_output_samples=8)
    assert not stack.tiled
    x = torch.randn(1, 4, 50)
    with torch.inference_mode():
        torch.testing.assert_close(stack(x), plain(x), rtol=0, atol=0)
