"""ip2p-bench training: InstructPix2Pix fine-tuning from a text-to-image model (accelerate)."""
