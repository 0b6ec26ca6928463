from .lslo_transformer import LSLoTransformerModel  # noqa: F401  (registers the model and architectures)
