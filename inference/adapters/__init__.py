"""LoRA adapters for the direction labels: training (`train`) and the Redis registry (`registry`)."""
