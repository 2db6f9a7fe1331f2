// M2 as brms writes it: every group-level effect non-centred (sd * z). Benchmark only.
data {
  int<lower=1> N;
  array[N] int<lower=0> n_trials;
  array[N] int<lower=0> y_success;
  int<lower=0> K;
  matrix[N, K] X;
  int<lower=1> J_school;
  int<lower=1> J_cohort;
  array[J_cohort] int<lower=1, upper=J_school> cohort_school;
  array[N] int<lower=1, upper=J_cohort> cohort;
}
transformed data {
  row_vector[K] X_mean;
  matrix[N, K] Xc;
  for (k in 1:K) {
    X_mean[k] = mean(X[, k]);
    Xc[, k] = X[, k] - X_mean[k];
  }
  array[N] int school;
  for (i in 1:N) school[i] = cohort_school[cohort[i]];
}
parameters {
  real Intercept;
  vector[K] b;
  real<lower=0> sd_school;
  real<lower=0> sd_cohort;
  vector[J_school] z_school;
  vector[J_cohort] z_cohort;
}
model {
  Intercept ~ student_t(3, 0, 2.5);
  sd_school ~ student_t(3, 0, 2.5);
  sd_cohort ~ student_t(3, 0, 2.5);
  z_school ~ std_normal();
  z_cohort ~ std_normal();
  y_success ~ binomial_logit_glm(n_trials, Xc, Intercept + sd_school * z_school[school] + sd_cohort * z_cohort[cohort], b);
}
generated quantities {
  real b_Intercept = Intercept - X_mean * b;
}
