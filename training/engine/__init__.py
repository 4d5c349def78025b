"""The run engine shared by pretraining and fine-tuning: distributed set-up, checkpoints, numerics, logging,
schedules, signals and the step loop. Nothing here knows about MDP; the trainers plug their model in."""
