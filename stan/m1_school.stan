// M1: y_success | trials(n_trials) ~ X b + (1 | school), binomial-logit.
data {
  int<lower=1> N;
  array[N] int<lower=0> n_trials;
  array[N] int<lower=0> y_success;
  int<lower=0> K;                      // fixed-effect columns besides the intercept
  matrix[N, K] X;
  int<lower=1> J_school;
  array[N] int<lower=1, upper=J_school> school;
  real<lower=0> prior_b_sd;                         // > 0: b ~ normal(0, prior_b_sd) (calibration, benchmarks/sbc.py); 0: flat, as brms
}
transformed data {
  // As brms: centre X so that the intercept prior applies at the mean design row.
  row_vector[K] X_mean;
  matrix[N, K] Xc;
  for (k in 1:K) {
    X_mean[k] = mean(X[, k]);
    Xc[, k] = X[, k] - X_mean[k];
  }
}
parameters {
  real Intercept;                      // intercept of the centred design
  vector[K] b;
  real<lower=0> sd_school;
  // Centred: with ~20 observations of ~50 students each, the data identify every
  // school mean sharply, so the centred form samples far better than sd * z.
  vector[J_school] mu_school;
}
model {
  Intercept ~ student_t(3, 0, 2.5);
  sd_school ~ student_t(3, 0, 2.5);
  mu_school ~ normal(Intercept, sd_school);
  if (prior_b_sd > 0) b ~ normal(0, prior_b_sd);
  // Not binomial_logit_glm: with K = 0 (the page's M1 has no fixed effects) Stan 2.35's GLM
  // ignores the data (measured: flat posterior).
  y_success ~ binomial_logit(n_trials, mu_school[school] + Xc * b);
}
generated quantities {
  real b_Intercept = Intercept - X_mean * b;   // intercept of the uncentred design
}
