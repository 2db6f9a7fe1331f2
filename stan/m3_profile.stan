// M3: M2 + (1 | school_subject_id), the school's subject profile.
data {
  int<lower=1> N;
  array[N] int<lower=0> n_trials;
  array[N] int<lower=0> y_success;
  int<lower=0> K;
  matrix[N, K] X;
  int<lower=1> J_school;
  int<lower=1> J_cohort;
  int<lower=1> J_profile;
  array[J_cohort] int<lower=1, upper=J_school> cohort_school;
  array[N] int<lower=1, upper=J_cohort> cohort;
  array[N] int<lower=1, upper=J_profile> subject_profile;
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
  real<lower=0> sd_profile;
  vector[J_school] mu_school;          // nested-centred, as in M2
  vector[J_cohort] mu_cohort;
  // Non-centred: the profile SD is tiny (~0.06), so the data barely identify each
  // profile effect and the centred form would be a funnel.
  vector[J_profile] z_profile;
}
model {
  Intercept ~ student_t(3, 0, 2.5);
  sd_school ~ student_t(3, 0, 2.5);
  sd_cohort ~ student_t(3, 0, 2.5);
  sd_profile ~ student_t(3, 0, 2.5);
  mu_school ~ normal(Intercept, sd_school);
  mu_cohort ~ normal(mu_school[cohort_school], sd_cohort);
  z_profile ~ std_normal();
  y_success ~ binomial_logit_glm(n_trials, Xc, mu_cohort[cohort] + sd_profile * z_profile[subject_profile], b);
}
generated quantities {
  real b_Intercept = Intercept - X_mean * b;
}
