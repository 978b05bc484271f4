"""An MNIST multilayer perceptron in JAX: model, steps, training loop and tools."""
