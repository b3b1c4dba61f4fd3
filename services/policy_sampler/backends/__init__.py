"""Generation engines behind one interface (base.SamplerBackend): hf (transformers, CPU default) and
vllm (GPU, optional extra; imported only when selected)."""
