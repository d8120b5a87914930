"""A Hugging Face Trainer script as users write them: a small Llama trained on a local text
file loaded with `datasets`. Nothing in it knows about the control plane; it needs
`datasets` and `accelerate`, which the worker's environment does not have."""

import argparse
import os

import torch
from datasets import load_dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

VOCAB = 128
BLOCK = 32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", default="out")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--report-to", default="none")
    args = parser.parse_args()

    corpus = f"corpus-{os.environ.get('LOCAL_RANK', '0')}.txt"  # ranks share the directory
    with open(corpus, "w") as handle:
        for i in range(200):
            handle.write(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}\n")
    raw = load_dataset("text", data_files={"train": corpus})["train"]

    def encode(batch):
        ids = [[ord(c) % VOCAB for c in text][:BLOCK] for text in batch["text"]]
        ids = [row + [0] * (BLOCK - len(row)) for row in ids]
        return {"input_ids": ids, "labels": ids}

    data = raw.map(encode, batched=True, remove_columns=["text"])
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=BLOCK,
    )
    model = LlamaForCausalLM(config)
    training = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to=[] if args.report_to == "none" else [args.report_to],
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=training, train_dataset=data)
    result = trainer.train()
    trainer.save_model()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(
        f"rank {rank} of {world}: trained {result.global_step} steps, "
        f"loss {result.training_loss:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
