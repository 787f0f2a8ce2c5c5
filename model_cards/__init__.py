"""Model cards of hf_intertrain: the template `InterTrainTrainer.create_model_card` renders
(`intertrain_template.md`) and the cards of the reference checkpoints, regenerated from real runs by
`scripts/make_reference_cards.py`. The repository's top-level `model_cards/` folder, installed as
`hf_intertrain.model_cards` so that `importlib.resources` finds the template in any install."""
