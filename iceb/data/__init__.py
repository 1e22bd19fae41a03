"""The benchmark's data: ImageNet concepts, EMCID's official files, the 1k split, prompts, the split bundle,
the misunderstood-name derivation for rectification, the CLIP tokenizer and request files."""
