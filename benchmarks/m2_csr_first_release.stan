// M2 as first released (benchmark only): the design multiplied in CSR form inside Stan.
// Kept to measure the cost of csr_matrix_times_vector against stan/m2_cohort.stan.
data {
  int<lower=1> N;
  array[N] int<lower=0> n_trials;
  array[N] int<lower=0> y_success;
  int<lower=1> K;                      // year_subject contrasts (intercept excluded)
  matrix[N, K] X;
  int<lower=1> J_school;
  int<lower=1> J_cohort;
  array[J_cohort] int<lower=1, upper=J_school> cohort_school;   // school of each cohort
  array[N] int<lower=1, upper=J_cohort> cohort;
  // Sampling scale hints (approximate posterior SDs, from the data: models.sampling_scales).
  // They set the multipliers below and change nothing in the model.
  real<lower=0> fixed_scale;
  vector<lower=0>[J_school] school_scale;
  vector<lower=0>[J_cohort] cohort_scale;
  vector<lower=0>[2] log_sd_scale;
}
transformed data {
  // As brms, the intercept prior applies at the mean design row X_mean.
  row_vector[K] X_mean;
  for (k in 1:K) {
    X_mean[k] = mean(X[, k]);
  }
  // Xbar: each cohort's mean design row (its year effect, averaged over its subjects).
  matrix[J_cohort, K] Xbar = rep_matrix(0, J_cohort, K);
  vector[J_cohort] rows = rep_vector(0, J_cohort);
  for (i in 1:N) {
    Xbar[cohort[i]] += X[i];
    rows[cohort[i]] += 1;
  }
  for (c in 1:J_cohort) {
    Xbar[c] /= rows[c];
  }
  // Xss: each school's mean cohort design row (its years' effects, averaged).
  matrix[J_school, K] Xss = rep_matrix(0, J_school, K);
  vector[J_school] cohorts = rep_vector(0, J_school);
  for (c in 1:J_cohort) {
    Xss[cohort_school[c]] += Xbar[c];
    cohorts[cohort_school[c]] += 1;
  }
  for (s in 1:J_school) {
    Xss[s] /= cohorts[s];
  }
  // X, Xbar and Xss are sparse (treatment contrasts): multiply them in CSR form.
  vector[num_elements(csr_extract_w(X))] X_w = csr_extract_w(X);
  array[num_elements(X_w)] int X_v = csr_extract_v(X);
  array[N + 1] int X_u = csr_extract_u(X);
  vector[num_elements(csr_extract_w(Xbar))] Xbar_w = csr_extract_w(Xbar);
  array[num_elements(Xbar_w)] int Xbar_v = csr_extract_v(Xbar);
  array[J_cohort + 1] int Xbar_u = csr_extract_u(Xbar);
  vector[num_elements(csr_extract_w(Xss))] Xss_w = csr_extract_w(Xss);
  array[num_elements(Xss_w)] int Xss_v = csr_extract_v(Xss);
  array[J_school + 1] int Xss_u = csr_extract_u(Xss);
}
parameters {
  // Multipliers: Stan's first warmup phase uses a unit metric, and with 25k cohorts the
  // posterior SDs span 0.005 (log sd_cohort) to 0.3; without them it runs ~100 iterations
  // at tree depth 8-10 (measured) before the first metric update.
  real<multiplier=fixed_scale> Intercept;
  // Cell effects as deviations from the mean year_subject cell: brms's treatment contrasts
  // b all share the reference cell's uncertainty (posterior correlation ~0.5, measured).
  vector<multiplier=fixed_scale>[K] delta;
  real<multiplier=log_sd_scale[1]> log_sd_school;
  real<multiplier=log_sd_scale[2]> log_sd_cohort;
  // Nested-centred: a school's mean, and each cohort's mean around its school's. Both are
  // sharply identified (3 subjects x ~50 students per cohort), where the non-centred sd * z
  // form would leave the sampler fighting the data. Each mean also carries the fixed effects
  // of its level (hierarchical centring: the school its years' average Xss * b, the cohort
  // its year's Xbar * b): otherwise the year effects trade against thousands of cohort and
  // school means along ridges the sampler crawls (full sample, measured: R-hat 1.09 for b
  // with neither, 1.03 with the cohort level only).
  vector<multiplier=school_scale>[J_school] mu_school;
  vector<multiplier=cohort_scale>[J_cohort] mu_cohort;
}
transformed parameters {
  vector[K] b = delta + sum(delta);   // treatment contrasts: cell minus reference cell
  real<lower=0> sd_school = exp(log_sd_school);
  real<lower=0> sd_cohort = exp(log_sd_cohort);
}
model {
  vector[J_cohort] cohort_fixed = csr_matrix_times_vector(J_cohort, K, Xbar_w, Xbar_v, Xbar_u, b);
  vector[J_school] school_fixed = csr_matrix_times_vector(J_school, K, Xss_w, Xss_v, Xss_u, b);
  Intercept ~ student_t(3, 0, 2.5);
  sd_school ~ student_t(3, 0, 2.5);
  sd_cohort ~ student_t(3, 0, 2.5);
  target += log_sd_school + log_sd_cohort;   // Jacobian: sd = exp(log sd)
  mu_school ~ normal(Intercept + school_fixed - X_mean * b, sd_school);
  mu_cohort ~ normal(mu_school[cohort_school] + cohort_fixed - school_fixed[cohort_school], sd_cohort);
  y_success ~ binomial_logit(n_trials, mu_cohort[cohort] - cohort_fixed[cohort]
                               + csr_matrix_times_vector(N, K, X_w, X_v, X_u, b));
}
generated quantities {
  real b_Intercept = Intercept - X_mean * b;
}
