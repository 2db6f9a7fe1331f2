// M2: y_success | trials(n_trials) ~ year_subject + (1 | school) + (1 | school_year_id).
data {
  int<lower=1> N;
  array[N] int<lower=0> n_trials;
  array[N] int<lower=0> y_success;
  int<lower=0> K;                      // year_subject contrasts (intercept excluded)
  matrix[N, K] X;
  int<lower=1> J_school;
  int<lower=1> J_cohort;
  array[J_cohort] int<lower=1, upper=J_school> cohort_school;   // school of each cohort
  array[N] int<lower=1, upper=J_cohort> cohort;
}
transformed data {
  row_vector[K] X_mean;
  matrix[N, K] Xc;
  for (k in 1:K) {
    X_mean[k] = mean(X[, k]);
    Xc[, k] = X[, k] - X_mean[k];
  }
}
parameters {
  real Intercept;
  vector[K] b;
  real<lower=0> sd_school;
  real<lower=0> sd_cohort;
  // Nested-centred: a school's mean, and each cohort's mean around its school's.
  // Both are sharply identified (3 subjects x ~50 students per cohort), where the
  // non-centred sd * z form would leave the sampler fighting the data.
  vector[J_school] mu_school;
  vector[J_cohort] mu_cohort;
}
model {
  Intercept ~ student_t(3, 0, 2.5);
  sd_school ~ student_t(3, 0, 2.5);
  sd_cohort ~ student_t(3, 0, 2.5);
  mu_school ~ normal(Intercept, sd_school);
  mu_cohort ~ normal(mu_school[cohort_school], sd_cohort);
  y_success ~ binomial_logit_glm(n_trials, Xc, mu_cohort[cohort], b);
}
generated quantities {
  real b_Intercept = Intercept - X_mean * b;
}
