"""LSTM, GRU and RNN with their matrices on arrays (docs/physics.md section 17), against torch's own
modules and an independent fake-quantized reference written here."""
import numpy as np
import pytest
import torch
from torch import nn

from mcsim import Hardware, convert
from mcsim.hardware import LayerNameError

IDEAL = dict(weight_bits=None, input_bits=None, adc={"bits": None})


class Seq(nn.Module):
    """Feeds batch-first ``(B, T, F)`` sequences to ``rnn`` and returns every number it gives back:
    the outputs at every step, ``h_n`` (and an LSTM's ``c_n``), flattened per sequence."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        self.rnn, self.lstm = rnn, isinstance(rnn, nn.LSTM)

    def forward(self, x):
        first = self.rnn.batch_first
        y, state = self.rnn(x if first else x.transpose(0, 1))
        states = (state[0], state[1]) if self.lstm else (state,)  # torch.fx traces the model: no isinstance
        parts = [(y if first else y.transpose(0, 1)).flatten(1)] + [s.transpose(0, 1).flatten(1) for s in states]
        return torch.cat(parts, 1)


def _net(kind: str, seed: int = 0) -> Seq:
    torch.manual_seed(seed)
    rnn = {
        "lstm_bidir_2layers_proj": lambda: nn.LSTM(5, 8, 2, batch_first=True, bidirectional=True, proj_size=3),
        "lstm_seq_first": lambda: nn.LSTM(5, 8, 1, batch_first=False),
        "lstm_no_bias": lambda: nn.LSTM(5, 8, 2, bias=False, batch_first=True),
        "gru_bidir": lambda: nn.GRU(5, 8, 2, batch_first=True, bidirectional=True),
        "rnn_tanh": lambda: nn.RNN(5, 8, 2, batch_first=False, bidirectional=True),
        "rnn_relu_no_bias": lambda: nn.RNN(5, 8, 1, nonlinearity="relu", bias=False, batch_first=True),
    }[kind]()
    return Seq(rnn).eval()


KINDS = ["lstm_bidir_2layers_proj", "lstm_seq_first", "lstm_no_bias", "gru_bidir", "rnn_tanh", "rnn_relu_no_bias"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_ideal_hardware_reproduces_torch(kind, mapping):
    net = _net(kind)
    x = torch.randn(3, 6, 5)
    ref = net(x)
    analog = convert(net, Hardware(mapping=mapping, rows_max=4, **IDEAL), trials=2, device="cpu")
    out = analog(x)
    assert out.shape == (2, *ref.shape)
    assert torch.allclose(out, ref.expand(2, -1, -1), rtol=0, atol=1e-5 * ref.abs().max().item())


def test_matrices_are_named_like_torch_parameters():
    analog = convert(_net("lstm_bidir_2layers_proj"), Hardware(**IDEAL), device="cpu")
    per_layer = ["weight_ih_l{}", "weight_hh_l{}", "weight_hr_l{}", "weight_ih_l{}_reverse", "weight_hh_l{}_reverse",
                 "weight_hr_l{}_reverse"]
    assert analog.layer_names == [f"rnn.{n.format(k)}" for k in range(2) for n in per_layer]
    assert [(d["name"], d["kind"]) for d in analog.digital_layers] == [("rnn", "recurrent")]


def _fake_quant_lstm(rnn: nn.LSTM, cal: dict, x: torch.Tensor) -> torch.Tensor:
    """A one-layer LSTM from torch's equations in float64 with 8-bit weights (``round(W / max|W| * 127)``)
    and 8-bit inputs over the engine's calibrated range per matrix (docs/physics.md sections 2, 5):
    written from the docs, sharing no code with the engine. Returns the outputs at every step."""

    def qw(w):
        w = w.detach().double()
        m = w.abs().max()
        return torch.round(w / m * 127).clamp(-127, 127) * m / 127

    def qx(v, name):
        r, signed = cal[name]["x_range"], cal[name]["signed"]
        n_max = 127 if signed else 255
        return torch.round(v / r * n_max).clamp(-n_max if signed else 0, n_max) * r / n_max

    w_ih, w_hh = qw(rnn.weight_ih_l0), qw(rnn.weight_hh_l0)
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().double()
    x = x.double()
    h = torch.zeros(x.shape[0], rnn.hidden_size, dtype=torch.float64)
    c = torch.zeros_like(h)
    ys = []
    for t in range(x.shape[1]):
        gates = qx(x[:, t], "rnn.weight_ih_l0") @ w_ih.T + qx(h, "rnn.weight_hh_l0") @ w_hh.T + b
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys, 1)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_8bit_weights_and_inputs_equal_fake_quantized_lstm(mapping):
    torch.manual_seed(1)
    net = Seq(nn.LSTM(6, 10, batch_first=True)).eval()
    hw = Hardware(mapping=mapping, weight_bits=8, input_bits=8, adc={"bits": None}, rows_max=5)
    analog = convert(net, hw, trials=1, device="cpu")
    cal = analog.calibrate([torch.randn(16, 7, 6)])
    x = torch.randn(4, 7, 6)
    ref = _fake_quant_lstm(net.rnn, cal, x).float()
    got = analog(x)[0][:, : 7 * 10].view(4, 7, 10)
    assert torch.allclose(got, ref, rtol=0, atol=1e-5), (got - ref).abs().max().item()
    # not trivially so: the unquantized LSTM is further off than the tolerance
    assert not torch.allclose(net(x)[:, : 7 * 10].view(4, 7, 10), ref, rtol=0, atol=1e-3)


NOISY = dict(IDEAL, read_noise={"model": "independent", "sigma": 0.05})


def _noise(layer, inp: torch.Tensor, chips, steps) -> torch.Tensor:
    """Read noise of ``layer``'s outputs ``(steps, chips * images * outputs)``: the same input ``inp``
    ``(images, F)`` read at every step, minus the noise-free output."""
    from torch.nn import functional as F

    layer.ctx.chips, layer.ctx.image_ids = torch.tensor(chips), torch.arange(len(inp))
    xin = inp.repeat_interleave(len(chips), 0)  # image-major (image, chip)
    clean = F.linear(inp, layer.digital_weight[:, :, 0, 0], layer.bias).repeat_interleave(len(chips), 0)
    return torch.stack([(layer(xin, step=t) - clean).flatten() for t in steps])


def _uncorrelated(rows: torch.Tensor) -> None:
    r = np.corrcoef(rows.double().numpy())
    off = r[~np.eye(len(r), dtype=bool)]
    assert np.abs(off).max() < 5 / np.sqrt(rows.shape[1]), np.abs(off).max()


def test_read_noise_is_drawn_per_step_independent_across_steps_and_chips_and_reproducible():
    net = _net("lstm_seq_first")
    analog = convert(net, Hardware(**NOISY), trials=3, device="cpu")
    hh = analog.net.get_submodule("rnn.weight_hh_l0")
    h = torch.rand(40, 8)
    z = _noise(hh, h, [0, 1, 2], range(6))  # (steps, image-major (image, chip) * outputs)
    assert z.std() > 0.01
    _uncorrelated(z)  # across steps
    per_chip = z.view(6, 40, 3, -1).permute(2, 0, 1, 3).flatten(1)  # (chips, steps * images * outputs)
    _uncorrelated(per_chip)  # across chips
    assert torch.equal(z, _noise(hh, h, [0, 1, 2], range(6)))  # a rerun draws the same
    # the input-hidden matrix reads every step at once: its steps (tokens) are independent too
    ih = analog.net.get_submodule("rnn.weight_ih_l0")
    ih.ctx.chips, ih.ctx.image_ids = torch.tensor([0, 1]), torch.arange(40)
    seq = torch.rand(40, 1, 5).expand(-1, 6, -1).repeat_interleave(2, 0)
    y = ih(seq).view(40, 2, 6, -1)
    clean = torch.nn.functional.linear(seq, ih.digital_weight[:, :, 0, 0], ih.bias).view(40, 2, 6, -1)
    _uncorrelated((y - clean).permute(2, 0, 1, 3).flatten(1))
    # end to end: the same chips and images give the same numbers, other chips other numbers
    x = torch.randn(5, 6, 5)
    ids = torch.arange(5)
    first = analog(x, image_ids=ids)
    assert torch.equal(first, analog(x, image_ids=ids))
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("kind", ["lstm_bidir_2layers_proj", "gru_bidir"])
def test_a_chip_alone_equals_the_chip_among_others(kind):
    net = _net(kind)
    hw = Hardware(adc={"bits": 6}, error={"model": "proportional", "sigma": 0.05},
                  read_noise={"model": "proportional", "sigma": 0.02}, rows_max=6)
    many = convert(net, hw, trials=5, seed=2, device="cpu")
    many.calibrate([torch.randn(16, 6, 5)])
    x = torch.randn(7, 6, 5)
    ids = torch.arange(10, 17)
    full = many(x, image_ids=ids)
    alone = convert(net, hw, trials=[3], seed=2, device="cpu")
    alone.load_calibration(many.calibration())
    assert torch.equal(alone(x, image_ids=ids), full[[3]])
    assert torch.equal(alone(x[2:5], image_ids=ids[2:5]), full[[3], 2:5])  # another batch
    threads = torch.get_num_threads()
    try:  # another thread count (the same calibration: it is the run's, made once)
        torch.set_num_threads(1 if threads > 1 else 2)
        assert torch.equal(alone(x, image_ids=ids), full[[3]])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_gate_sigmoid_gives_a_row_the_same_bits_in_any_call(threads):
    """torch's CPU sigmoid rounds its scalar tail differently from its vector loop; the gates' sigmoid
    and tanh (mcsim.engine.recurrent._sigmoid_, _tanh_) give a row the same bits alone, in any block
    of rows, at any width and thread count, within a few ulp of torch's."""
    from mcsim.engine.recurrent import _sigmoid_, _tanh_

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(threads)
        for width in (1, 50, 64, 200, 256, 300):
            x = 6 * torch.randn(700, width, generator=g)
            for f, ref in ((_sigmoid_, torch.sigmoid), (_tanh_, torch.tanh)):
                alone = torch.cat([f(x[i:i + 1].clone()) for i in range(len(x))])
                for lo, hi in ((0, 700), (3, 517), (100, 101)):
                    assert torch.equal(f(x[lo:hi].clone()), alone[lo:hi]), (f.__name__, width, lo, hi)
                torch.testing.assert_close(alone, ref(x), rtol=0, atol=3e-7)
    finally:
        torch.set_num_threads(old)


def test_overrides_by_module_or_matrix_name():
    net = _net("lstm_no_bias")
    hw = Hardware(adc={"bits": 8}, layers={"rnn": {"adc": {"bits": 6}}, "rnn.weight_hh_l1": {"adc": {"bits": 4}},
                                           "*_l0": {"adc": {"bits": 5}}})
    analog = convert(net, hw, device="cpu")
    bits = {n: h.adc.bits for n, h in analog.layer_hardware.items()}
    assert bits == {"rnn.weight_ih_l0": 6, "rnn.weight_hh_l0": 6, "rnn.weight_ih_l1": 6, "rnn.weight_hh_l1": 4}
    digital = convert(net, Hardware(layers={"rnn": {"analog": False}}), device="cpu")
    assert digital.layer_names == []
    x = torch.randn(2, 4, 5)
    assert torch.allclose(digital(x)[0], net(x), rtol=0, atol=1e-6)
    with pytest.raises(LayerNameError, match="rnx"):
        convert(net, Hardware(layers={"rnx": {"analog": False}}), device="cpu")


def test_packed_sequences_and_unbatched_inputs_are_refused_clearly():
    analog = convert(_net("gru_bidir"), Hardware(**IDEAL), device="cpu")
    rec = analog.net.rnn
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(2, 4, 5), [4, 2], batch_first=True)
    with pytest.raises(ValueError, match="packed sequences are not supported"):
        rec(packed)
    with pytest.raises(ValueError, match="batched"):
        rec(torch.randn(4, 5))


def test_energy_counts_every_step_of_each_matrix():
    """Per image, the input-hidden matrix converts each of its outputs once per step (its steps are
    tokens of one call), and so does the hidden-hidden matrix, read once per step (section 12)."""
    import mcsim

    net = _net("rnn_relu_no_bias")  # one layer: 5 inputs, 8 hidden, 8 outputs per matrix
    analog = convert(net, Hardware(adc={"bits": 8}), trials=2, device="cpu")
    analog.calibrate([torch.randn(8, 6, 5)])
    with mcsim.count_energy(analog) as counter:
        analog(torch.randn(3, 6, 5))
    counts = counter.result()
    assert counts.layers == ["rnn.weight_ih_l0", "rnn.weight_hh_l0"]
    assert counts.counts["adc_conversions"].tolist() == [[6 * 8, 6 * 8]] * 2


@pytest.mark.slow  # trains builtin:mnist-lstm (about 10 s) and runs it through the CLI
def test_sequence_scenario_runs_end_to_end_through_the_cli(tmp_path):
    """scenarios/cpu/16_sequence_lstm.yaml, shrunk (fewer images, points and chips), through
    `mcsim run` and `mcsim report`."""
    from pathlib import Path

    import yaml
    from typer.testing import CliRunner

    from mcsim.api import open_result
    from mcsim.cli import app

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "scenarios/cpu/16_sequence_lstm.yaml").read_text())
    spec["data"].update(limit=40, batch_size=40, calibration={"split": "train", "count": 40})
    spec["sweep"]["grid"]["hardware.error.sigma"] = [0.1]
    spec.update(trials=2, execution={"shard_images": 40, "trials_per_task": 2, "device": "cpu"},
                output=str(tmp_path / "out.zarr"))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    cli = CliRunner()
    result = cli.invoke(app, ["run", str(tmp_path / "s.yaml")])
    assert result.exit_code == 0, result.output
    ds = open_result(tmp_path / "out.zarr")
    assert ds["top1"].shape == (1, 2, 2) and float(ds["top1"].min()) > 0.8
    assert "lstm.weight_hh_l0" in ds["layer"].values.tolist()
    report = cli.invoke(app, ["report", str(tmp_path / "out.zarr")])
    assert report.exit_code == 0 and "lstm.weight_hh_l0.bits" in report.output, report.output


def test_first_and_last_layers_follow_the_recurrent_module_where_it_runs():
    class Head(nn.Module):  # the head is registered first, runs last
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)
            self.rnn = nn.GRU(5, 8, batch_first=True)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    analog = convert(Head(), Hardware(analog_first_layer=False, analog_last_layer=False), device="cpu")
    assert analog.layer_names == ["rnn.weight_hh_l0"]
    assert {d["name"] for d in analog.digital_layers if d["kind"] == "layer"} == {"rnn.weight_ih_l0", "head"}
    # the same for attention, which the trace keeps whole too: a ViT's last layer is its head
    from mcsim.models import digits_vit

    vit = convert(digits_vit(), Hardware(analog_first_layer=False, analog_last_layer=False), device="cpu")
    assert [d["name"] for d in vit.digital_layers if d["kind"] == "layer"] == ["patch", "head"]


def test_a_given_initial_state_is_used():
    class Init(nn.Module):  # learned initial states, expanded to the batch (which holds the chips)
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(5, 8, 2, batch_first=True)
            self.h0, self.c0 = nn.Parameter(torch.randn(2, 1, 8)), nn.Parameter(torch.randn(2, 1, 8))

        def forward(self, x):
            n = x.shape[0]
            y, (h, c) = self.lstm(x, (self.h0.expand(-1, n, -1).contiguous(), self.c0.expand(-1, n, -1).contiguous()))
            return torch.cat([y.flatten(1), c.transpose(0, 1).flatten(1)], 1)

    torch.manual_seed(3)
    net = Init().eval()
    x = torch.randn(3, 4, 5)
    ref = net(x)
    out = convert(net, Hardware(**IDEAL), trials=2, device="cpu")(x)
    assert torch.allclose(out, ref.expand(2, -1, -1), rtol=0, atol=1e-5 * ref.abs().max().item())


def test_layer_sensitivity_sweep_takes_a_recurrent_module_name():
    from mcsim.sweep import LayerSweep

    names = ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "head"]
    assert LayerSweep(mode="only_analog", include=["rnn"]).select(names) == names[:2]
    assert LayerSweep(mode="only_ideal", exclude=["rnn"]).select(names) == ["head"]
