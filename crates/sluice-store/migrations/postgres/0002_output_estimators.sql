-- Learned output-token estimators (sluice_core::OutputEstimator), one per
-- model and request class, in the estimator's own versioned text encoding.
CREATE TABLE output_estimators (
    model      TEXT   NOT NULL,
    class      TEXT   NOT NULL,
    state      TEXT   NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (model, class)
);
