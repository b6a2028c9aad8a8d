"""transformers causal LMs as seeking models: excite on MoE families and a folder; Motivation pairs (2 -> 4 layers)."""

import json
import math
import warnings

import pytest
import torch
import transformers
from helpers import Crash, crash_at

from seeking.cli.main import main
from seeking.errors import ConfigError, SeekingWarning
from seeking.excitation import Excitation
from seeking.integrations.transformers import HF_FAMILIES, TINY_CONFIGS, tiny_config
from seeking.model_file import load_model
from seeking.models import HFCausalLM, create_model
from seeking.moe import expert_layers
from seeking.training import TrainConfig, train
from seeking.training.excite import ExciteConfig, build_model, excite_data
from seeking.training.tasks import TextModeling

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models
FAST = ["--steps", "4", "--eval-every-steps", "2", "--batch-size", "8", "--block-size", "16", "--seeds", "0"]
FAST += ["--optimizer", "adamw", "--lr", "0.003", "--quiet"]


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    return path


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_every_tiny_family_is_a_registered_excitable_language_model(family):
    model = create_model(f"hf_{family}_tiny", vocab_size=20, block_size=16)
    assert isinstance(model, HFCausalLM) and expert_layers(model)
    idx = torch.randint(0, 20, (2, 16))
    assert model(idx).shape == (2, 16, 20)
    model.train()
    model(idx, torch.ones(2, 16, dtype=torch.bool)).sum().backward()
    # each layer counted each token's top-k experts once
    for layer in expert_layers(model):
        top_k = int(layer.expert_counts.sum()) // 32
        assert int(layer.expert_counts.sum()) == 32 * top_k and top_k >= 1


@pytest.mark.parametrize("family", sorted(set(TINY_CONFIGS) - set(HF_FAMILIES)))
def test_the_dense_families_build_at_both_depths_and_are_no_moe(family, text, tmp_path, capsys):
    shallow, deep = (create_model(f"hf_{family}_{s}", vocab_size=20, block_size=16) for s in ("tiny", "tiny_4l"))
    assert (shallow.hf.config.num_hidden_layers, deep.hf.config.num_hidden_layers) == (2, 4)
    assert shallow(torch.randint(0, 20, (2, 16))).shape == (2, 16, 20) and not expert_layers(shallow)
    # the deep model is the shallow one with two more blocks: every tensor of the shallow one has its place
    deep_shapes = {k: v.shape for k, v in deep.state_dict().items()}
    assert all(deep_shapes.get(k) == v.shape for k, v in shallow.state_dict().items())
    out = tmp_path / "run"
    assert main(["excite", "--model", f"hf_{family}_tiny", "--data", str(text), *FAST, "--out", str(out)]) == 2
    assert "has no MoE layer" in capsys.readouterr().err and not out.exists()


def test_excite_trains_a_tiny_hf_family_on_a_text_file(text, tmp_path):
    out = tmp_path / "run"
    argv = ["excite", "--model", "hf_olmoe_tiny", "--data", str(text), "--arms", "none", "zero_sum", "global"]
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    runs = {r["arm"]: r for r in json.loads((out / "excitation.json").read_text())["runs"]}
    # the global control scales every expert by 1: the plain optimizer's run, exactly
    assert [c["train_loss"] for c in runs["global"]["curve"]] == [c["train_loss"] for c in runs["none"]["curve"]]
    assert runs["zero_sum"]["train_loss"] != runs["none"]["train_loss"]
    for r in runs.values():
        assert math.isfinite(r["val loss"]) and 0 <= r["dead_fraction"] <= 1


def test_a_local_folder_trains_from_its_own_weights(text, tmp_path):
    folder = tmp_path / "olmoe"
    config = tiny_config("olmoe", vocab_size=30, max_positions=32)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    config = ExciteConfig(data=str(text), model=str(folder), block_size=16, seeds=[0]).validate()
    model = build_model(config, excite_data(config, "cpu"), 0, torch.device("cpu"))
    saved = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert model.hf.state_dict().keys() == saved.state_dict().keys()
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in model.hf.state_dict().items())
    out = tmp_path / "run"
    argv = ["excite", "--model", str(folder), "--data", str(text), "--arms", "zero_sum", *FAST]
    argv[argv.index("--eval-every-steps") + 1] = "1"
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeekingWarning)  # e.g. "no expert layer counted a routed token"
        assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == str(folder)
    # from_pretrained gives a model in eval mode: trained as loaded, nothing would be counted at the first
    # step, and Excitation's factors would all be 1
    first = json.loads((out / "excitation.json").read_text())["runs"][0]["curve"][0]
    assert first["step"] == 1 and any(phi != 1.0 for layer in first["phi"] for phi in layer)


def test_a_folder_saved_in_bfloat16_trains_float32_weights(text, tmp_path):
    model = transformers.AutoModelForCausalLM.from_config(tiny_config("olmoe", vocab_size=30, max_positions=32))
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    loaded = create_model(str(tmp_path / "bf16"), vocab_size=20, block_size=16)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert all(torch.equal(p.float(), loaded.hf.get_parameter(n)) for n, p in model.named_parameters())


def test_excitation_on_a_transformers_model_not_made_excitable_names_the_fix():
    hf = transformers.AutoModelForCausalLM.from_config(tiny_config("olmoe", vocab_size=20, max_positions=16))
    with pytest.raises(ConfigError, match=r"excitable\(model\) in seeking.integrations.transformers"):
        Excitation(torch.optim.AdamW(hf.parameters()), hf)


@pytest.mark.parametrize(
    "make,argv,message",
    [
        (None, ["--model", "/nonexistent/model"], "is not a local model folder (no config.json in it)"),
        ("olmoe", ["--data", "digits"], "does not train on an image data set"),
        ("olmoe", ["--model-kwargs", '{"width": 8}'], "takes no argument 'width' (given in model_kwargs?)"),
        ("small_vocab", [], "has 8 token ids but the text's vocabulary has"),
        ("dense", [], "has no MoE layer: Excitation needs a model with expert layers"),
        (
            None,
            ["--model", "hf_qwen3_moe_tiny", "--model-kwargs", '{"config": {"num_expertz": 8}}'],
            "has no field 'num_expertz' (did you mean 'num_experts'?)",
        ),
    ],
)
def test_bad_hf_folders_exit_2_and_write_nothing(make, argv, message, text, tmp_path, capsys):
    folder = tmp_path / "model"
    if make == "dense":  # a causal LM without MoE layers
        config = transformers.LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
        transformers.LlamaForCausalLM(config).save_pretrained(folder)
    elif make is not None:
        vocab = 8 if make == "small_vocab" else 30
        model = transformers.AutoModelForCausalLM.from_config(tiny_config("olmoe", vocab_size=vocab, max_positions=32))
        model.save_pretrained(folder)
    capsys.readouterr()  # save_pretrained's progress bar
    out = tmp_path / "run"
    given = ["--model", str(folder)] if make is not None else []
    assert main(["excite", "--data", str(text), *given, *FAST, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seeking: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("family", ["llama", "qwen3_moe"])
def test_a_transformers_pair_trains_motivated_from_the_same_function_and_saves_usable_models(family, text, tmp_path):
    """Motivation on transformers' own models: the 4-layer model contains the 2-layer one, starts as its
    function (added blocks zeroed by the identity rules), and each saved model reloads to its figure."""
    base, large = f"hf_{family}_tiny", f"hf_{family}_tiny_4l"
    config = TrainConfig(
        data=str(text), base=base, motivated=large, optimizer="adamw", lr=0.003, epochs=1, batch_size=8, block_size=16
    ).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeekingWarning)  # an inexact start would warn
        result = train(config, tmp_path / "run", progress=False, log=lambda line: None)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert 0 < summary["motivated_steps"] < summary["steps"]
    data = TextModeling(str(text), batch_size=8, block_size=16, device=torch.device("cpu"))
    for record in summary["models"].values():
        model, meta = load_model(result.run_dir / record["checkpoint"])
        assert isinstance(model, HFCausalLM) and meta["model"] in (base, large)
        assert data.evaluate(model)[0]["loss"] == pytest.approx(record["loss"], abs=1e-6)


def save_tokenizer(folder, text: str, vocab_size: int = 60) -> None:
    """A byte-level BPE tokenizer trained on ``text``, saved as transformers saves one (nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=sorted(set(text)), show_progress=False)
    bpe.train_from_iterator([text], trainer)
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe).save_pretrained(folder)


def test_a_local_tokenizer_encodes_the_text_and_is_part_of_its_identity(text, tmp_path):
    words = text.read_text(encoding="utf-8")
    save_tokenizer(tmp_path / "tok", words)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    data = TextModeling(
        str(text), batch_size=4, block_size=8, device=torch.device("cpu"), tokenizer=str(tmp_path / "tok")
    )
    ids = torch.cat([data.text.train, data.text.val])
    # the tokenizer's own ids, in order, and nothing lost: they decode to the file
    assert ids.tolist() == hf(words, add_special_tokens=False)["input_ids"] and data.text.decode(ids) == words
    # merges: fewer tokens than characters
    assert data.model_kwargs()["vocab_size"] == len(hf) and len(ids) < len(words)
    # resuming with another tokenizer is refused by the checkpoint's identity
    chars = TextModeling(str(text), batch_size=4, block_size=8, device=torch.device("cpu"))
    assert chars.identity() != data.identity()
    save_tokenizer(tmp_path / "other", words, vocab_size=24)
    other = TextModeling(
        str(text), batch_size=4, block_size=8, device=torch.device("cpu"), tokenizer=str(tmp_path / "other")
    )
    assert len(other.text.train) != len(data.text.train) and other.identity() != data.identity()
    assert data.file_metadata(str(text), None)["tokenizer"] == str(tmp_path / "tok")


def test_a_tokenizer_that_loses_text_warns(text, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    word_level = Tokenizer(models.WordLevel({"to": 0, "be": 1, "[UNK]": 2}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]").save_pretrained(tmp_path / "t")
    with pytest.warns(SeekingWarning, match=r"maps \d+ of the text's \d+ tokens to its unknown token '\[UNK\]'"):
        TextModeling(str(text), batch_size=2, block_size=4, device=torch.device("cpu"), tokenizer=str(tmp_path / "t"))


@pytest.mark.parametrize(
    "where,message",
    [("missing", "is not a folder: give a local tokenizer folder"), ("empty", "holds no tokenizer (none of")],
)
def test_a_bad_tokenizer_folder_exits_2_and_writes_nothing(where, message, text, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    argv = ["train", "--pair", "gpt_2l:gpt_4l", "--data", str(text), "--tokenizer", str(tmp_path / where)]
    assert main([*argv, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_a_pair_of_local_folders_trains_with_their_tokenizer_and_saves_models_usable_without_them(text, tmp_path):
    """``--pair FOLDER:FOLDER``: Motivation on the user's own saved transformers models, their text encoded by
    their tokenizer; the start is exact (warnings are errors) and each saved model reloads, folders deleted,
    to the figure the run recorded."""
    words = text.read_text(encoding="utf-8")
    save_tokenizer(tmp_path / "small", words)
    vocab = len(transformers.AutoTokenizer.from_pretrained(tmp_path / "small", local_files_only=True))
    for name, layers in (("small", 2), ("large", 4)):
        torch.manual_seed(layers)
        config = tiny_config("llama", vocab_size=vocab, max_positions=32, num_hidden_layers=layers)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / name)
    base, large = str(tmp_path / "small"), str(tmp_path / "large")
    out = tmp_path / "run"
    argv = ["train", "--pair", f"{base}:{large}", "--data", str(text), "--tokenizer", base, "--block-size", "8"]
    argv += ["--epochs", "1", "--batch-size", "4", "--optimizer", "adamw", "--lr", "0.003", "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeekingWarning)  # an inexact start, or a lossy tokenizer, would warn
        assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["motivated_steps"] < summary["steps"]
    # the base started from the folder's own weights (a Motivation run never changes the base's start)
    data = TextModeling(str(text), batch_size=4, block_size=8, device=torch.device("cpu"), tokenizer=base)
    import shutil

    shutil.rmtree(tmp_path / "large")
    shutil.move(tmp_path / "small", tmp_path / "moved")  # the saved files must not need the folders
    for role, record in summary["models"].items():
        model, meta = load_model(out / record["checkpoint"])
        assert meta["model"] == "hf_causal_lm" and meta["extra"]["tokenizer"] == base
        assert model.hf.config.num_hidden_layers == (2 if role == "base" else 4)
        assert data.evaluate(model)[0]["loss"] == pytest.approx(record["loss"], abs=1e-6)


def test_a_model_folder_with_a_tokenizer_trained_on_characters_warns(text, tmp_path):
    folder = tmp_path / "olmoe"
    transformers.AutoModelForCausalLM.from_config(
        tiny_config("olmoe", vocab_size=60, max_positions=32)
    ).save_pretrained(folder)
    save_tokenizer(folder, text.read_text(encoding="utf-8"))
    config = ExciteConfig(data=str(text), model=str(folder), block_size=16, seeds=[0]).validate()
    with pytest.warns(SeekingWarning, match=r"has a tokenizer, but the text is encoded one token per character"):
        excite_data(config, "cpu")


def test_a_folder_named_like_a_model_is_not_used_unless_written_as_a_path(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    transformers.AutoModelForCausalLM.from_config(
        tiny_config("llama", vocab_size=30, max_positions=32)
    ).save_pretrained("gpt_2l")
    with pytest.warns(SeekingWarning, match=r"'gpt_2l' is a model name and also a model folder here"):
        assert not isinstance(create_model("gpt_2l", vocab_size=20, block_size=16), HFCausalLM)
    assert isinstance(create_model("./gpt_2l", vocab_size=20, block_size=16), HFCausalLM)
    # a run records the folder as an absolute path: --resume and the saved files work from anywhere
    config = TrainConfig(data="poem.txt", base="./gpt_2l", motivated="gpt_4l", tokenizer="tok").validate()
    assert (config.base, config.tokenizer) == (str(tmp_path / "gpt_2l"), str(tmp_path / "tok"))
    assert config.data == str(tmp_path / "poem.txt") and config.motivated == "gpt_4l"


def test_a_model_missing_an_argument_names_it():
    with pytest.raises(ConfigError, match=r"model 'hf_causal_lm' needs the argument\(s\) 'config'"):
        create_model("hf_causal_lm", vocab_size=20, block_size=16)


def test_resuming_after_the_tokenizer_changed_says_the_data_changed(text, tmp_path, inject, capsys):
    words = text.read_text(encoding="utf-8")
    save_tokenizer(tmp_path / "tok", words)
    run = tmp_path / "run"
    argv = ["train", "--pair", "gpt_2l:gpt_4l", "--data", str(text), "--tokenizer", str(tmp_path / "tok")]
    argv += ["--block-size", "8", "--batch-size", "4", "--epochs", "2", "--checkpoint-every", "2", "--quiet"]
    inject(crash_at(3))
    with pytest.raises(Crash):
        main([*argv, "--out", str(run)])
    inject.undo()
    save_tokenizer(tmp_path / "tok", words, vocab_size=24)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "changed since its checkpoint was written" in err and "tokenizer_token_ids_sha256" in err
