"""Local zero-shot task files for lm-evaluation-harness: YAML templates and tiny data (see docs/zeroshot.md)."""
