// M3: M2 + (1 | school_subject_id), the school's subject profile.
// The design (treatment contrasts of year_subject) arrives in its distinct rows, built once in
// Python (models.cohort_design): each cohort's mean row (Xbar), each school's mean cohort row
// (Xss), and each observation's row minus its cohort's (X - Xbar).
functions {
  // Group means from the centred parameters (mu) and the non-centred ones (mean + sd * z).
  vector assemble(vector mean, array[] int centred, vector mu, array[] int noncentred, real sd, vector z) {
    vector[rows(mean)] out;
    out[centred] = mu;
    out[noncentred] = mean[noncentred] + sd * z;
    return out;
  }
}
data {
  int<lower=1> N;
  array[N] int<lower=0> n_trials;
  array[N] int<lower=0> y_success;
  int<lower=1> K;                                   // year_subject contrasts (intercept excluded)
  row_vector[K] X_mean;                             // mean design row: the intercept prior applies here (brms)
  int<lower=1> J_school;
  int<lower=1> J_cohort;
  array[J_cohort] int<lower=1, upper=J_school> cohort_school;   // school of each cohort
  array[N] int<lower=1, upper=J_cohort> cohort;
  int<lower=1> J_profile;
  array[N] int<lower=1, upper=J_profile> subject_profile;
  int<lower=1> R_school;                            // distinct Xss rows
  matrix[R_school, K] Xss_rows;
  array[J_school] int<lower=1, upper=R_school> school_row;
  int<lower=1> R_cohort;                            // distinct Xbar rows
  matrix[R_cohort, K] Xbar_rows;
  array[J_cohort] int<lower=1, upper=R_cohort> cohort_row;
  int<lower=1> R_within;                            // distinct X - Xbar rows
  matrix[R_within, K] Xw_rows;
  array[N] int<lower=1, upper=R_within> within_row;
  // Each school and cohort is centred where its data identify it sharply and non-centred where
  // they do not (models.parameterisation); the model is the same either way.
  int<lower=0, upper=J_school> J_school_c;
  array[J_school_c] int<lower=1, upper=J_school> school_c;
  array[J_school - J_school_c] int<lower=1, upper=J_school> school_nc;
  int<lower=0, upper=J_cohort> J_cohort_c;
  array[J_cohort_c] int<lower=1, upper=J_cohort> cohort_c;
  array[J_cohort - J_cohort_c] int<lower=1, upper=J_cohort> cohort_nc;
  // Sampling scales (approximate posterior SDs of each parameter, mu or z; models.sampling_scales):
  // multipliers only.
  real<lower=0> fixed_scale;
  vector<lower=0>[J_school_c] school_c_scale;
  vector<lower=0>[J_school - J_school_c] school_nc_scale;
  vector<lower=0>[J_cohort_c] cohort_c_scale;
  vector<lower=0>[J_cohort - J_cohort_c] cohort_nc_scale;
  vector<lower=0>[3] log_sd_scale;
  // Profiles likewise: centred (r_profile_c ~ normal(0, sd_profile)) where the data identify them
  // sharply, non-centred (sd_profile * z_profile) where they do not (design.profile_parameterisation).
  int<lower=0, upper=J_profile> J_profile_c;
  array[J_profile_c] int<lower=1, upper=J_profile> profile_c;
  array[J_profile - J_profile_c] int<lower=1, upper=J_profile> profile_nc;
  vector<lower=0>[J_profile_c] profile_c_scale;
  vector<lower=0>[J_profile - J_profile_c] profile_nc_scale;
  int<lower=0, upper=1> emit_eta;                   // 1: write the linear predictor (tests)
  real<lower=0> prior_b_sd;                         // > 0: b ~ normal(0, prior_b_sd) (calibration, benchmarks/sbc.py); 0: flat, as brms
}
parameters {
  real<multiplier=fixed_scale> Intercept;
  // Cell effects as deviations from the mean year_subject cell: treatment contrasts all share
  // the reference cell's uncertainty.
  vector<multiplier=fixed_scale>[K] delta;
  real<multiplier=log_sd_scale[1]> log_sd_school;
  real<multiplier=log_sd_scale[2]> log_sd_cohort;
  vector<multiplier=school_c_scale>[J_school_c] mu_school_c;
  vector<multiplier=school_nc_scale>[J_school - J_school_c] z_school;
  vector<multiplier=cohort_c_scale>[J_cohort_c] mu_cohort_c;
  vector<multiplier=cohort_nc_scale>[J_cohort - J_cohort_c] z_cohort;
  real<multiplier=log_sd_scale[3]> log_sd_profile;
  vector<multiplier=profile_c_scale>[J_profile_c] r_profile_c;
  vector<multiplier=profile_nc_scale>[J_profile - J_profile_c] z_profile;
}
transformed parameters {
  vector[K] b = delta + sum(delta);                 // treatment contrasts: cell minus reference cell
  real<lower=0> sd_school = exp(log_sd_school);
  real<lower=0> sd_cohort = exp(log_sd_cohort);
  real<lower=0> sd_profile = exp(log_sd_profile);
}
model {
  // Hierarchical centring: each school mean carries its years' fixed effects (Xss b), each
  // cohort mean its year's (Xbar b), so the year effects do not trade against thousands of means.
  vector[J_school] school_fixed = (Xss_rows * b)[school_row];
  vector[J_school] school_mean = Intercept - X_mean * b + school_fixed;
  vector[J_school] mu_school = assemble(school_mean, school_c, mu_school_c, school_nc, sd_school, z_school);
  vector[J_cohort] cohort_mean = mu_school[cohort_school] + (Xbar_rows * b)[cohort_row] - school_fixed[cohort_school];
  vector[J_cohort] mu_cohort = assemble(cohort_mean, cohort_c, mu_cohort_c, cohort_nc, sd_cohort, z_cohort);
  vector[J_profile] r_profile = assemble(rep_vector(0, J_profile), profile_c, r_profile_c, profile_nc, sd_profile, z_profile);

  Intercept ~ student_t(3, 0, 2.5);
  sd_school ~ student_t(3, 0, 2.5);
  sd_cohort ~ student_t(3, 0, 2.5);
  sd_profile ~ student_t(3, 0, 2.5);
  if (prior_b_sd > 0) b ~ normal(0, prior_b_sd);   // flat on b when 0; b is linear in delta, so no Jacobian
  target += log_sd_school + log_sd_cohort + log_sd_profile;   // Jacobian: sd = exp(log sd)
  mu_school_c ~ normal(school_mean[school_c], sd_school);
  z_school ~ std_normal();
  mu_cohort_c ~ normal(cohort_mean[cohort_c], sd_cohort);
  z_cohort ~ std_normal();
  r_profile_c ~ normal(0, sd_profile);
  z_profile ~ std_normal();
  y_success ~ binomial_logit(n_trials, mu_cohort[cohort] + (Xw_rows * b)[within_row] + r_profile[subject_profile]);
}
generated quantities {
  real b_Intercept = Intercept - X_mean * b;
  vector[emit_eta * N] eta;
  if (emit_eta) {  // the model block's linear predictor, written out for tests
    vector[J_school] school_fixed = (Xss_rows * b)[school_row];
    vector[J_school] mu_school = assemble(Intercept - X_mean * b + school_fixed, school_c, mu_school_c, school_nc,
                                          sd_school, z_school);
    vector[J_cohort] cohort_mean = mu_school[cohort_school] + (Xbar_rows * b)[cohort_row] - school_fixed[cohort_school];
    eta = assemble(cohort_mean, cohort_c, mu_cohort_c, cohort_nc, sd_cohort, z_cohort)[cohort] + (Xw_rows * b)[within_row]
          + assemble(rep_vector(0, J_profile), profile_c, r_profile_c, profile_nc, sd_profile, z_profile)[subject_profile];
  }
}
