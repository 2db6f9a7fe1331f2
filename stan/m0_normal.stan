// M0: proportion ~ normal(school, sigma): the page's foil, blind to the number of students.
data {
  int<lower=1> N;                      // rows: one per observation, or one per school (see below)
  vector<lower=0, upper=1>[N] proportion;   // the row's mean proportion
  array[N] int<lower=1> n_obs;         // observations behind the row (1 for an observation)
  vector<lower=0>[N] ss_within;        // their sum of squares about the row's mean (0 for an observation)
  int<lower=1> J_school;
  array[N] int<lower=1, upper=J_school> school;
  real prior_intercept_location;       // brms: median of the response
}
parameters {
  real Intercept;
  real<lower=0> sd_school;
  real<lower=0> sigma;
  // Centred: about 20 observations per school pin each school mean down.
  vector[J_school] mu_school;
}
model {
  Intercept ~ student_t(3, prior_intercept_location, 2.5);
  sd_school ~ student_t(3, 0, 2.5);
  sigma ~ student_t(3, 0, 2.5);
  mu_school ~ normal(Intercept, sd_school);
  // sum over a row's n observations of normal_lpdf(y_i | mu, sigma), written with their mean and
  // within sum of squares (the same value, up to a constant): for n = 1 it is normal_lpdf(y | mu, sigma)
  target += normal_lpdf(proportion | mu_school[school], sigma * inv_sqrt(to_vector(n_obs)))
            - (sum(n_obs) - N) * log(sigma) - sum(ss_within) / (2 * square(sigma));
}
