"""Scorers: a language model scoring prompts over the direction labels (`base.Scorer`), two backends
(`hf`: transformers + PEFT, `engine`: our paged multi-LoRA engine) and `factory.build_scorer`."""
