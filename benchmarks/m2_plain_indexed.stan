// M2 in its plainest indexed form (benchmark only): one effect per year_subject cell, cohorts
// centred on their school, no multipliers, no hierarchical centring of the fixed effects.
data {
  int<lower=1> N;
  array[N] int<lower=0> n_trials;
  array[N] int<lower=0> y_success;
  int<lower=1> L;                                   // year_subject cells
  array[N] int<lower=1, upper=L> cell;
  int<lower=1> J_school;
  int<lower=1> J_cohort;
  array[J_cohort] int<lower=1, upper=J_school> cohort_school;
  array[N] int<lower=1, upper=J_cohort> cohort;
}
parameters {
  vector[L] beta;
  real<lower=0> sd_school;
  real<lower=0> sd_cohort;
  vector[J_school] u_school;
  vector[J_cohort] v_cohort;
}
model {
  sd_school ~ student_t(3, 0, 2.5);
  sd_cohort ~ student_t(3, 0, 2.5);
  u_school ~ normal(0, sd_school);
  v_cohort ~ normal(u_school[cohort_school], sd_cohort);
  y_success ~ binomial_logit(n_trials, beta[cell] + v_cohort[cohort]);
}
