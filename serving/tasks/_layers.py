"""Model builders shared by tasks."""

from __future__ import annotations

from typing import Any


def binary_mlp(input_width: int, learning_rate: float) -> Any:
    """A compiled 32-16-1 MLP with a sigmoid output for a yes/no risk score."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((input_width,), name="inputs"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    return model
